//! The server under test: started in this process on `127.0.0.1:0`,
//! started as one or several child `hush serve` processes (so their memory
//! and CPU can be read apart from the clients'), or an already running
//! server given by URL. A started server has a fresh SQLite file in a temp
//! dir, or a fresh database on the PostgreSQL server of `--postgres`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hush::config::ServerConfig;
use hush::store::{DbLocation, Durability, Store};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::placement::{BenchDatabase, CpuGroup};

/// How the bench places the servers it starts (its global flags).
#[derive(Debug, Clone)]
pub struct Placement {
    /// A PostgreSQL server's URL: each target gets a fresh database on it
    /// instead of a SQLite file.
    pub postgres: Option<String>,
    /// `hush serve` nodes per target (more than one needs `postgres`).
    pub nodes: usize,
    /// Each child node's share of one CPU (a cgroup quota).
    pub cpu_quota: Option<f64>,
}

impl Default for Placement {
    fn default() -> Self {
        Self {
            postgres: None,
            nodes: 1,
            cpu_quota: None,
        }
    }
}

impl Placement {
    /// Whether only child processes can honour this placement.
    pub fn needs_children(&self) -> bool {
        self.nodes > 1 || self.cpu_quota.is_some()
    }
}

enum Kind {
    InProcess {
        shutdown_tx: oneshot::Sender<()>,
        server: JoinHandle<()>,
    },
    Children {
        children: Vec<tokio::process::Child>,
        /// What `restart` starts again, and where.
        binary: PathBuf,
        addrs: Vec<SocketAddr>,
    },
    External,
}

pub struct Target {
    /// `http://host:port` of the first node, no trailing slash.
    pub base: String,
    pub ws_url: String,
    /// Every node's WebSocket URL, `ws_url` first.
    pub ws_urls: Vec<String>,
    kind: Kind,
    dir: Option<PathBuf>,
    /// The `--db` of the server(s): a SQLite path or a PostgreSQL URL.
    db: String,
    database: Option<BenchDatabase>,
    cpu_quota: Option<f64>,
    cpu_groups: Vec<CpuGroup>,
}

impl Target {
    /// The server in this process, bound exactly as `hush serve` binds it.
    /// `HUSH_DURABILITY=normal` selects `hush serve --durability normal`
    /// (a child server reads the same variable).
    pub async fn in_process(placement: &Placement) -> Result<Self> {
        if placement.needs_children() {
            bail!("several nodes or a CPU quota need child servers: build the hush binary");
        }
        let dir = temp_dir()?;
        let (db, database) = data_location(placement, &dir).await?;
        let durability = match std::env::var("HUSH_DURABILITY").as_deref() {
            Ok("normal") => Durability::Normal,
            _ => Durability::Full,
        };
        let location: DbLocation = db.parse().expect("any text is a location");
        let store = Store::open_with(location, durability)
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
        let kind = Kind::InProcess {
            shutdown_tx,
            server,
        };
        Ok(Self::at(&[addr], kind, dir, db, database, None))
    }

    /// Starts `placement.nodes` × `binary serve` on free loopback ports,
    /// on a temp SQLite file or a fresh PostgreSQL database, and waits (at
    /// most 30 s) for each one's `/healthz`.
    pub async fn child(binary: &Path, placement: &Placement) -> Result<Self> {
        if placement.nodes > 1 && placement.postgres.is_none() {
            bail!("several nodes share one PostgreSQL database: give --postgres");
        }
        let dir = temp_dir()?;
        let (db, database) = data_location(placement, &dir).await?;
        let mut addrs = Vec::new();
        for _ in 0..placement.nodes.max(1) {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            addrs.push(probe.local_addr()?);
        }
        let kind = Kind::Children {
            children: Vec::new(),
            binary: binary.to_owned(),
            addrs: addrs.clone(),
        };
        let mut target = Self::at(&addrs, kind, dir, db, database, placement.cpu_quota);
        if let Err(e) = target.start_children().await {
            target.stop().await;
            return Err(e);
        }
        Ok(target)
    }

    /// Stops the child servers (SIGTERM, as an operator would) and starts
    /// them again on the same addresses and database.
    pub async fn restart(mut self) -> Result<Self> {
        if !matches!(self.kind, Kind::Children { .. }) {
            bail!("only child servers can be restarted");
        }
        self.stop_servers().await;
        if let Err(e) = self.start_children().await {
            self.stop().await;
            return Err(e);
        }
        Ok(self)
    }

    async fn start_children(&mut self) -> Result<()> {
        let Kind::Children {
            children,
            binary,
            addrs,
        } = &mut self.kind
        else {
            bail!("not a child target");
        };
        let dir = self.dir.as_ref().context("a child target has a temp dir")?;
        let is_cluster = self.database.is_some();
        for (i, addr) in addrs.iter().enumerate() {
            let mut command = tokio::process::Command::new(&*binary);
            command
                .arg("serve")
                .arg("--addr")
                .arg(addr.to_string())
                .arg("--db")
                .arg(&self.db)
                .arg("--log-level")
                .arg("warn");
            if is_cluster {
                command.arg("--node-id").arg(format!("node{}", i + 1));
            }
            let child = command
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
                        .open(dir.join(format!("server{}.log", i + 1)))?,
                )
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            if let (Some(quota), Some(pid)) = (self.cpu_quota, child.id()) {
                self.cpu_groups.push(CpuGroup::hold(pid, quota)?);
            }
            children.push(child);
        }
        let http = hush::client::tls::http_client();
        let started = Instant::now();
        for addr in addrs.iter() {
            loop {
                let probe = http
                    .get(format!("http://{addr}/healthz"))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                if matches!(&probe, Ok(reply) if reply.status().is_success()) {
                    break;
                }
                if started.elapsed() > Duration::from_secs(30) {
                    bail!("{} did not answer /healthz within 30 s", binary.display());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
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
            ws_urls: vec![ws_url.clone()],
            ws_url,
            kind: Kind::External,
            dir: None,
            db: String::new(),
            database: None,
            cpu_quota: None,
            cpu_groups: Vec::new(),
        }
    }

    fn at(
        addrs: &[SocketAddr],
        kind: Kind,
        dir: PathBuf,
        db: String,
        database: Option<BenchDatabase>,
        cpu_quota: Option<f64>,
    ) -> Self {
        let ws_urls: Vec<String> = addrs.iter().map(|a| format!("ws://{a}/ws")).collect();
        Self {
            base: format!("http://{}", addrs[0]),
            ws_url: ws_urls[0].clone(),
            ws_urls,
            kind,
            dir: Some(dir),
            db,
            database,
            cpu_quota,
            cpu_groups: Vec::new(),
        }
    }

    pub fn label(&self) -> String {
        let kind = match &self.kind {
            Kind::InProcess { .. } => "in-process".to_owned(),
            Kind::Children { addrs, .. } if addrs.len() > 1 => format!("{} nodes", addrs.len()),
            Kind::Children { .. } => "child".to_owned(),
            Kind::External => return "external".to_owned(),
        };
        let store = if self.database.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        };
        match self.cpu_quota {
            Some(q) => format!("{kind}, {store}, {q} CPU each"),
            None => format!("{kind}, {store}"),
        }
    }

    /// The server's resident memory in KiB, if it can be read: the
    /// children's `/proc/<pid>/status` summed, or this process's own when
    /// the server runs in-process (then it includes the bench clients too).
    pub fn server_rss_kib(&self) -> Option<u64> {
        match &self.kind {
            Kind::InProcess { .. } => rss_kib("self"),
            Kind::Children { children, .. } => {
                children.iter().map(|c| rss_kib(&c.id()?.to_string())).sum()
            }
            Kind::External => None,
        }
    }

    /// CPU time (user + system) the child servers have used so far.
    pub fn server_cpu_secs(&self) -> Option<f64> {
        match &self.kind {
            Kind::Children { children, .. } => children
                .iter()
                .map(|c| cpu_secs(&c.id()?.to_string()))
                .sum(),
            _ => None,
        }
    }

    /// Bytes the child servers have logged so far (their stderr, at `warn`).
    pub fn log_bytes(&self) -> Option<u64> {
        match (&self.kind, &self.dir) {
            (Kind::Children { addrs, .. }, Some(dir)) => (1..=addrs.len())
                .map(|i| {
                    std::fs::metadata(dir.join(format!("server{i}.log")))
                        .ok()
                        .map(|m| m.len())
                })
                .sum(),
            _ => None,
        }
    }

    /// Stops the servers, keeping their data for a restart.
    async fn stop_servers(&mut self) {
        match &mut self.kind {
            Kind::InProcess { .. } | Kind::External => {}
            Kind::Children { children, .. } => {
                for child in children.iter() {
                    if let Some(pid) = child.id() {
                        let _ = tokio::process::Command::new("kill")
                            .arg("-TERM")
                            .arg(pid.to_string())
                            .status()
                            .await;
                    }
                }
                for mut child in children.drain(..) {
                    if tokio::time::timeout(Duration::from_secs(20), child.wait())
                        .await
                        .is_err()
                    {
                        let _ = child.kill().await;
                    }
                }
                for group in self.cpu_groups.drain(..) {
                    group.remove();
                }
            }
        }
    }

    /// Stops what this bench started and removes its data.
    pub async fn stop(mut self) {
        self.stop_servers().await;
        if let Kind::InProcess {
            shutdown_tx,
            server,
        } = self.kind
        {
            let _ = shutdown_tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(20), server).await;
        }
        if let Some(database) = self.database.take() {
            database.drop_now().await;
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The `--db` for a target in `dir`: its SQLite file, or a fresh
/// PostgreSQL database.
async fn data_location(
    placement: &Placement,
    dir: &Path,
) -> Result<(String, Option<BenchDatabase>)> {
    match &placement.postgres {
        Some(admin) => {
            let database = BenchDatabase::create(admin).await?;
            Ok((database.url.clone(), Some(database)))
        }
        None => Ok((
            dir.join("hush.db")
                .to_str()
                .context("a UTF-8 temp dir")?
                .to_owned(),
            None,
        )),
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
