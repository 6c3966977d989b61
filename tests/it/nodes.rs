//! Several `hush serve` processes (the real binary) sharing one PostgreSQL
//! database, each on its own loopback port with its own `--node-id`, and a
//! real haproxy in front of them, round-robin, as deploy/ runs them.
//!
//! `Cluster::start(n, extra)` needs HUSH_TEST_POSTGRES_URL (tests using it
//! are named `postgres_*` and run in the PostgreSQL pass of scripts/test.sh)
//! and haproxy on the PATH or in /usr/sbin; `Cluster::start_on(admin, ..)`
//! runs on another PostgreSQL (a test's own `pg_server::PgServer`). `cluster.node(i)` and
//! `cluster.proxy()` are `TestApp`s for the usual HTTP and WebSocket
//! helpers; `stop_node`/`kill_node`/`restart_node` take one node down and
//! bring it back on the same port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use reqwest::StatusCode;
use tempfile::TempDir;

use crate::cli_support::HUSH;
use crate::support::{PgDatabase, TestApp, external_app};

/// One `hush serve` of a cluster.
pub struct Node {
    pub id: String,
    pub addr: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    /// haproxy's frontend: what clients connect to.
    pub addr: SocketAddr,
    /// The shared database (dropped after every process has stopped).
    pub db: PgDatabase,
    extra: Vec<String>,
    proxy: Option<Child>,
    dir: TempDir,
}

/// A free loopback port (bound, then released for the child to take).
async fn free_port() -> Result<SocketAddr> {
    Ok(tokio::net::TcpListener::bind("127.0.0.1:0")
        .await?
        .local_addr()?)
}

/// Whether this `hush serve` has `--node-id` (added with multi-node
/// support; until then nodes start without it).
fn has_node_id_flag() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        Command::new(HUSH)
            .args(["serve", "--help"])
            .stdin(Stdio::null())
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).contains("--node-id"))
            .unwrap_or(false)
    })
}

fn haproxy_binary() -> Result<PathBuf> {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin"])
    {
        let candidate = Path::new(dir).join("haproxy");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("haproxy is not installed (apt-get install haproxy; .ci/run does)")
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Waits until `GET http://addr/healthz` answers 200.
async fn wait_healthy(addr: SocketAddr, what: &str, log: &Path) -> Result<()> {
    let client = hush::client::tls::http_client();
    for _ in 0..600 {
        if let Ok(r) = client
            .get(format!("http://{addr}/healthz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            && r.status() == StatusCode::OK
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} did not become healthy; its log:\n{}", tail(log))
}

fn stop_child(child: &mut Child, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status();
    for _ in 0..300 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Cluster {
    /// `n` nodes on one fresh database, each started with `extra` flags,
    /// and haproxy in front. Returns once every node and the proxy answer.
    pub async fn start(n: usize, extra: &[&str]) -> Result<Self> {
        Self::start_with(PgDatabase::create().await?, n, extra).await
    }

    /// As `start`, on a fresh database of the PostgreSQL cluster whose
    /// admin database `admin` names (e.g. a test's own `PgServer`) rather
    /// than HUSH_TEST_POSTGRES_URL's.
    pub async fn start_on(admin: &str, n: usize, extra: &[&str]) -> Result<Self> {
        Self::start_with(PgDatabase::create_on(admin).await?, n, extra).await
    }

    async fn start_with(db: PgDatabase, n: usize, extra: &[&str]) -> Result<Self> {
        ensure!(n >= 1, "a cluster has nodes");
        let dir = tempfile::tempdir()?;
        let mut cluster = Self {
            nodes: Vec::new(),
            addr: free_port().await?,
            db,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            proxy: None,
            dir,
        };
        for i in 0..n {
            let addr = free_port().await?;
            let id = format!("node{}", i + 1);
            let log = cluster.dir.path().join(format!("{id}.log"));
            cluster.nodes.push(Node {
                id,
                addr,
                child: None,
                log,
            });
        }
        // All at once: the first ones race to apply the migrations, as a
        // fleet started together would.
        for i in 0..n {
            cluster.spawn_node(i)?;
        }
        for node in &cluster.nodes {
            wait_healthy(node.addr, &node.id, &node.log).await?;
        }
        cluster.start_proxy().await?;
        Ok(cluster)
    }

    fn spawn_node(&mut self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let mut command = Command::new(HUSH);
        command
            .args(["serve", "--addr", &node.addr.to_string()])
            .args(["--log-level", "info"])
            .arg("--db")
            .arg(&self.db.url)
            .args(&self.extra)
            .env_remove("HUSH_LOG")
            .env_remove("HUSH_DB")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if has_node_id_flag() {
            command.args(["--node-id", &node.id]);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", node.id))?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    async fn start_proxy(&mut self) -> Result<()> {
        let servers: String = self
            .nodes
            .iter()
            .map(|n| {
                format!(
                    "    server {} {} check inter 200ms fall 2 rise 1\n",
                    n.id, n.addr
                )
            })
            .collect();
        // WebSocket-friendly: `timeout tunnel` governs an upgraded
        // connection (the server pings every 30 s); HTTP requests are
        // balanced one by one, round-robin, over the nodes that pass
        // /healthz.
        let config = format!(
            "global
    maxconn 2048
defaults
    mode http
    option dontlognull
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    timeout http-request 10s
frontend hush
    bind {}
    default_backend nodes
backend nodes
    balance roundrobin
    option httpchk GET /healthz
{servers}",
            self.addr
        );
        let path = self.dir.path().join("haproxy.cfg");
        std::fs::write(&path, config)?;
        let log_path = self.dir.path().join("haproxy.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(haproxy_binary()?)
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting haproxy")?;
        self.proxy = Some(child);
        wait_healthy(self.addr, "haproxy", &log_path).await
    }

    /// A client of node `i` (0-based), bypassing the proxy.
    pub fn node(&self, i: usize) -> Result<TestApp> {
        external_app(self.nodes[i].addr, &self.db.url)
    }

    /// A client of the cluster through haproxy.
    pub fn proxy(&self) -> Result<TestApp> {
        external_app(self.addr, &self.db.url)
    }

    /// Node `i`'s log so far (its stderr).
    #[allow(dead_code)] // for the multi-node tests
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// SIGTERM to node `i`, waiting for it to exit.
    #[allow(dead_code)] // for the multi-node tests
    pub fn stop_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            stop_child(&mut child, "-TERM");
        }
    }

    /// SIGKILL to node `i`.
    #[allow(dead_code)] // for the multi-node tests
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            stop_child(&mut child, "-KILL");
        }
    }

    /// Starts node `i` again on its port (after `stop_node`/`kill_node`).
    #[allow(dead_code)] // for the multi-node tests
    pub async fn restart_node(&mut self, i: usize) -> Result<()> {
        ensure!(self.nodes[i].child.is_none(), "node {i} is running");
        let mut attempts = 0;
        loop {
            self.spawn_node(i)?;
            match wait_healthy(self.nodes[i].addr, &self.nodes[i].id, &self.nodes[i].log).await {
                Ok(()) => return Ok(()),
                // The port may still be held a moment after the old process.
                Err(_) if attempts < 3 => {
                    attempts += 1;
                    self.kill_node(i);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut proxy) = self.proxy.take() {
            stop_child(&mut proxy, "-TERM");
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                stop_child(&mut child, "-TERM");
            }
        }
        // `db` drops after this: the database goes last.
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_user_registered_through_one_node_logs_in_through_another() -> Result<()> {
    let cluster = Cluster::start(2, &[]).await?;
    let (one, two) = (cluster.node(0)?, cluster.node(1)?);
    one.register("alice").await?;
    let token = two.login("alice").await?;
    // The session made on node 2 is good on node 1: sessions live in the
    // shared database.
    let (status, body) = one.get("/api/v1/rooms", Some(&token)).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let room = one.create_room(&token, "made on node 1").await?;
    let (status, body) = two.get("/api/v1/rooms", Some(&token)).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.as_array()
            .context("rooms")?
            .iter()
            .any(|r| r["id"] == room),
        "node 2 lists the room made on node 1: {body}"
    );

    // Through haproxy: logins land on either node and work; a WebSocket
    // (upgraded through the proxy) authenticates and answers pings.
    let proxy = cluster.proxy()?;
    for _ in 0..4 {
        proxy.login("alice").await?;
    }
    let mut ws = proxy.connect_ws(&token).await?;
    ws.ping().await?;
    ws.close().await?;
    Ok(())
}
