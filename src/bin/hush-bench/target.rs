//! The server under test: started in this process on `127.0.0.1:0` with a
//! fresh SQLite file in a temp dir, started as a child `hush serve`
//! process (so its memory can be read apart from the clients'), or an
//! already running server given by URL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hush::config::ServerConfig;
use hush::store::{Durability, Store};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

enum Kind {
    InProcess {
        shutdown_tx: oneshot::Sender<()>,
        server: JoinHandle<()>,
    },
    Child {
        child: tokio::process::Child,
        /// What `restart` starts again, and where.
        again: Box<(PathBuf, SocketAddr)>,
    },
    External,
}

pub struct Target {
    /// `http://host:port`, no trailing slash.
    pub base: String,
    pub ws_url: String,
    kind: Kind,
    dir: Option<PathBuf>,
}

impl Target {
    /// The server in this process, bound exactly as `hush serve` binds it.
    /// `HUSH_DURABILITY=normal` selects `hush serve --durability normal`
    /// (a child server reads the same variable).
    pub async fn in_process() -> Result<Self> {
        let dir = temp_dir()?;
        let durability = match std::env::var("HUSH_DURABILITY").as_deref() {
            Ok("normal") => Durability::Normal,
            _ => Durability::Full,
        };
        let store = Store::open_with(&dir.join("hush.db"), durability)
            .await
            .context("opening the bench database")?;
        let listener = hush::server::bind("127.0.0.1:0".parse().expect("a valid socket address"))?;
        let addr = listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(hush::server::run(
            listener,
            store,
            ServerConfig {
                limits: hush::config::Limits::unlimited(),
                ..ServerConfig::default()
            },
            async move {
                let _ = shutdown_rx.await;
            },
        ));
        Ok(Self::at(
            addr,
            Kind::InProcess {
                shutdown_tx,
                server,
            },
            Some(dir),
        ))
    }

    /// Starts `binary serve` on a free loopback port with a temp database
    /// and waits (at most 30 s) for `/healthz`.
    pub async fn child(binary: &Path) -> Result<Self> {
        let dir = temp_dir()?;
        let addr = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?
        };
        Self::child_in(binary, dir, addr).await
    }

    /// Stops a child server (SIGTERM, as an operator would) and starts it
    /// again on the same address and database.
    pub async fn restart(mut self) -> Result<Self> {
        let Kind::Child { again, .. } = &self.kind else {
            bail!("only a child server can be restarted");
        };
        let (binary, addr) = (again.0.clone(), again.1);
        let dir = self.dir.take().context("a child server has a temp dir")?;
        self.stop().await;
        Self::child_in(&binary, dir, addr).await
    }

    async fn child_in(binary: &Path, dir: PathBuf, addr: SocketAddr) -> Result<Self> {
        let child = tokio::process::Command::new(binary)
            .arg("serve")
            .arg("--addr")
            .arg(addr.to_string())
            .arg("--db")
            .arg(dir.join("hush.db"))
            .arg("--log-level")
            .arg("warn")
            // One address drives every connection: lift the abuse limits.
            .args([
                "--connections-per-ip",
                "1000000",
                "--sessions-per-user",
                "1000000",
            ])
            .args([
                "--message-rate",
                "1000000/s",
                "--user-message-rate",
                "1000000/s",
                "--frame-rate",
                "1000000/s",
            ])
            .args([
                "--registration-rate",
                "1000000/s",
                "--login-rate",
                "1000000/s",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("server.log"))?,
            )
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let kind = Kind::Child {
            child,
            again: Box::new((binary.to_owned(), addr)),
        };
        let target = Self::at(addr, kind, Some(dir));
        let http = hush::client::tls::http_client();
        let started = Instant::now();
        loop {
            let probe = http
                .get(format!("{}/healthz", target.base))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if matches!(&probe, Ok(reply) if reply.status().is_success()) {
                return Ok(target);
            }
            if started.elapsed() > Duration::from_secs(30) {
                target.stop().await;
                bail!("{} did not answer /healthz within 30 s", binary.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn external(url: &str) -> Self {
        let base = url.trim_end_matches('/').to_owned();
        let ws_url = format!(
            "{}/ws",
            base.replacen("https://", "wss://", 1)
                .replacen("http://", "ws://", 1)
        );
        Self {
            base,
            ws_url,
            kind: Kind::External,
            dir: None,
        }
    }

    fn at(addr: SocketAddr, kind: Kind, dir: Option<PathBuf>) -> Self {
        Self {
            base: format!("http://{addr}"),
            ws_url: format!("ws://{addr}/ws"),
            kind,
            dir,
        }
    }

    pub fn label(&self) -> &'static str {
        match self.kind {
            Kind::InProcess { .. } => "in-process",
            Kind::Child { .. } => "child",
            Kind::External => "external",
        }
    }

    /// The server's resident memory in KiB, if it can be read: the child's
    /// `/proc/<pid>/status`, or this process's own when the server runs
    /// in-process (then it includes the bench clients too).
    pub fn server_rss_kib(&self) -> Option<u64> {
        match &self.kind {
            Kind::InProcess { .. } => rss_kib("self"),
            Kind::Child { child, .. } => rss_kib(&child.id()?.to_string()),
            Kind::External => None,
        }
    }

    /// CPU time (user + system) the child server has used so far.
    pub fn server_cpu_secs(&self) -> Option<f64> {
        match &self.kind {
            Kind::Child { child, .. } => cpu_secs(&child.id()?.to_string()),
            _ => None,
        }
    }

    /// Bytes the child server has logged so far (its stderr, at `warn`).
    pub fn log_bytes(&self) -> Option<u64> {
        match (&self.kind, &self.dir) {
            (Kind::Child { .. }, Some(dir)) => std::fs::metadata(dir.join("server.log"))
                .ok()
                .map(|m| m.len()),
            _ => None,
        }
    }

    /// Stops what this bench started and removes its temp dir.
    pub async fn stop(self) {
        match self.kind {
            Kind::InProcess {
                shutdown_tx,
                server,
            } => {
                let _ = shutdown_tx.send(());
                let _ = tokio::time::timeout(Duration::from_secs(20), server).await;
            }
            Kind::Child { mut child, .. } => {
                if let Some(pid) = child.id() {
                    let _ = tokio::process::Command::new("kill")
                        .arg("-TERM")
                        .arg(pid.to_string())
                        .status()
                        .await;
                }
                if tokio::time::timeout(Duration::from_secs(20), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
            Kind::External => {}
        }
        if let Some(dir) = self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// User plus system CPU seconds of a process, from `/proc/<pid>/stat`
/// (clock ticks of 1/100 s, as on every Linux this bench runs on).
pub fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields count from after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// `VmRSS` of `/proc/<pid>/status` in KiB.
pub fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The `hush` binary next to this one (same target dir), if built.
pub fn sibling_hush() -> Option<PathBuf> {
    let path = std::env::current_exe().ok()?.with_file_name("hush");
    path.is_file().then_some(path)
}

fn temp_dir() -> Result<PathBuf> {
    let mut tag = [0u8; 8];
    getrandom::fill(&mut tag).expect("the OS random source works");
    let name: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join(format!("hush-bench-{name}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
