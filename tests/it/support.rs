//! Test harness: a real hush server per test (own port, own SQLite file in
//! a `TempDir`, or its own PostgreSQL database: see `postgres_admin_url`),
//! HTTP helpers for the API and a WebSocket client that never waits longer
//! than `FRAME_TIMEOUT` for anything.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::{SinkExt, StreamExt};
use hush::config::ServerConfig;
use hush::crypto::statements;
use hush::store::{DbLocation, Durability, Store};
use reqwest::StatusCode;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::AssertSqlSafe;
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest wait for any single frame or reply: a test must never hang.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on frames read while looking for one, so no loop is endless.
pub const MAX_FRAMES: usize = 20_000;

pub struct TestApp {
    pub addr: SocketAddr,
    pub base_url: String,
    /// The SQLite file. On PostgreSQL a path in the temp dir that nothing
    /// uses: tests that read it are SQLite-only (see scripts/test.sh).
    pub db_path: PathBuf,
    /// What `--db` takes for this server's database: the SQLite file's
    /// path, or the URL of its PostgreSQL database.
    pub db: String,
    pub config: ServerConfig,
    pub http: reqwest::Client,
    dir: TempDir,
    shutdown_tx: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    /// Dropped after the server: the database goes with the app.
    pg: Option<PgDatabase>,
}

pub async fn spawn_app() -> Result<TestApp> {
    spawn_app_with(ServerConfig::default()).await
}

pub async fn spawn_app_with(config: ServerConfig) -> Result<TestApp> {
    let dir = tempfile::tempdir().context("creating the temp dir")?;
    let pg = match postgres_admin_url() {
        Some(_) => Some(PgDatabase::create().await?),
        None => None,
    };
    start(dir, config, pg).await
}

async fn start(dir: TempDir, config: ServerConfig, pg: Option<PgDatabase>) -> Result<TestApp> {
    let db_path = dir.path().join("hush.db");
    let db = match &pg {
        Some(pg) => pg.url.clone(),
        None => path_arg(&db_path)?,
    };
    let store = open_store(&db).await.context("opening the store")?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(hush::server::run(
        listener,
        store,
        config.clone(),
        async move {
            let _ = shutdown_rx.await;
        },
    ));
    Ok(TestApp {
        addr,
        base_url: format!("http://{addr}"),
        db_path,
        db,
        config,
        http: hush::client::tls::http_client(),
        dir,
        shutdown_tx: Some(shutdown_tx),
        server: Some(server),
        pg,
    })
}

/// A handle on a server running elsewhere (a `hush serve` child process)
/// at `addr` with its database at `db` (a SQLite path or a PostgreSQL URL,
/// as `--db` takes), for the same HTTP and WebSocket helpers. Its
/// `shutdown` does nothing: stop the process itself.
pub fn external_app(addr: SocketAddr, db: &str) -> Result<TestApp> {
    Ok(TestApp {
        addr,
        base_url: format!("http://{addr}"),
        db_path: PathBuf::from(db),
        db: db.to_owned(),
        config: ServerConfig::default(),
        http: hush::client::tls::http_client(),
        dir: tempfile::tempdir().context("creating the temp dir")?,
        shutdown_tx: None,
        server: None,
        pg: None,
    })
}

// ---- The database under test: SQLite (default) or PostgreSQL ----------
//
// With HUSH_TEST_POSTGRES_URL set (the URL of a throwaway cluster's admin
// database, as scripts/test.sh sets it inside `pg_virtualenv`), every test
// server gets a database of its own, `hush_t_<pid>_<n>`, created here and
// dropped with the app. Tests that look at the SQLite file itself are
// listed in scripts/test.sh and left out of that pass; tests named
// `postgres_*` run only in it.

/// The admin URL of the PostgreSQL cluster the suite runs against, if any.
pub fn postgres_admin_url() -> Option<String> {
    std::env::var("HUSH_TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.is_empty())
}

/// Whether this run serves from PostgreSQL.
pub fn on_postgres() -> bool {
    postgres_admin_url().is_some()
}

/// The admin URL, for tests that need PostgreSQL (`postgres_*`): an error
/// naming the variable when it is missing, never a silent pass.
pub fn require_postgres() -> Result<String> {
    postgres_admin_url().context(
        "HUSH_TEST_POSTGRES_URL is not set: postgres_* tests run in the PostgreSQL pass of \
         scripts/test.sh (inside pg_virtualenv)",
    )
}

static DATABASES: AtomicU64 = AtomicU64::new(0);

/// A fresh, empty PostgreSQL database on the test cluster, dropped (with
/// whatever is still connected to it) when this is.
pub struct PgDatabase {
    pub name: String,
    /// The URL a server (or `hush admin`) takes as `--db`.
    pub url: String,
    admin: String,
}

impl PgDatabase {
    pub async fn create() -> Result<Self> {
        Self::create_on(&require_postgres()?).await
    }

    /// A fresh database on the cluster whose admin database `admin` names
    /// (a test's private PostgreSQL, see `pg_server`).
    pub async fn create_on(admin: &str) -> Result<Self> {
        let admin = admin.to_owned();
        let name = format!(
            "hush_t_{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        let url = hush::store::with_database(&admin, &name).context("a postgres:// URL")?;
        let mut conn = connect_admin(&admin).await?;
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .with_context(|| format!("creating database {name}"))?;
        let _ = sqlx::Connection::close(conn).await;
        Ok(Self { name, url, admin })
    }

    /// As `create`, for code that is not async (or not on a runtime).
    pub fn create_blocking() -> Result<Self> {
        on_own_runtime(Self::create())
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let dropped = on_own_runtime(async move {
            let mut conn = connect_admin(&admin).await?;
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await?;
            let _ = sqlx::Connection::close(conn).await;
            anyhow::Ok(())
        });
        if let Err(e) = dropped {
            eprintln!("could not drop test database {}: {e:#}", self.name);
        }
    }
}

async fn connect_admin(admin: &str) -> Result<sqlx::PgConnection> {
    use sqlx::Connection;
    sqlx::PgConnection::connect(admin).await.context(
        "connecting to the admin database (HUSH_TEST_POSTGRES_URL, or a test's own PgServer)",
    )
}

/// Runs `fut` to completion on a runtime of its own, on a thread of its
/// own: callable from sync code and from inside a test's runtime alike.
fn on_own_runtime<T: Send + 'static>(
    fut: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(fut)
    })
    .join()
    .map_err(|_| anyhow!("database setup thread panicked"))?
}

fn path_arg(path: &Path) -> Result<String> {
    Ok(path
        .to_str()
        .with_context(|| format!("a UTF-8 path: {}", path.display()))?
        .to_owned())
}

/// The `--db` argument for a `hush serve` (or `hush admin`) child process
/// whose SQLite file would be `path`: `path` itself, or on PostgreSQL the
/// URL of a database of its own. The same `path` always gets the same
/// database, so a server restarted on its directory finds its data. These
/// databases live until the throwaway cluster goes.
pub fn server_db(path: &Path) -> Result<String> {
    if !on_postgres() {
        return path_arg(path);
    }
    static BY_PATH: Mutex<Option<HashMap<PathBuf, PgDatabase>>> = Mutex::new(None);
    let mut map = BY_PATH.lock().unwrap_or_else(|e| e.into_inner());
    let map = map.get_or_insert_with(HashMap::new);
    if let Some(db) = map.get(path) {
        return Ok(db.url.clone());
    }
    let db = PgDatabase::create_blocking()?;
    let url = db.url.clone();
    // Kept (not dropped) for the rest of the run.
    map.insert(path.to_owned(), db);
    Ok(url)
}

/// Opens the server store on `db` (a SQLite path or a PostgreSQL URL), as
/// `hush serve --db` does.
pub async fn open_store(db: &str) -> Result<Store> {
    Ok(Store::open_with(DbLocation::parse(db), Durability::Full).await?)
}

/// A pool on the app's database, SQLite or PostgreSQL, for tests that look
/// at stored rows through `hush::store::db::query` (the same SQL on both).
pub async fn connect_db(db: &str) -> Result<hush::store::db::Db> {
    use hush::store::db::Db;
    if db.starts_with("postgres://") || db.starts_with("postgresql://") {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(db)
            .await?;
        Ok(Db::Postgres(pool))
    } else {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(2)
            .connect(&format!("sqlite:{db}"))
            .await?;
        Ok(Db::Sqlite(pool))
    }
}

/// A test user's password (at least 8 characters).
pub fn password(name: &str) -> String {
    format!("{name}-correct-horse")
}

pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

pub fn unb64(text: &str) -> Result<Vec<u8>> {
    Ok(STANDARD.decode(text)?)
}

fn pem_der(name: &str) -> Result<Vec<u8>> {
    let path = format!(
        "{}/tests/fixtures/keys/{name}.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    let pem = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    unb64(&body)
}

/// A test-only RSA private key from `tests/fixtures/keys/{name}.pem`.
pub fn private_key(name: &str) -> Result<rsa::PrivateKey> {
    rsa::PrivateKey::from_pkcs8_der(&pem_der(name)?).map_err(|e| anyhow!("parsing key {name}: {e}"))
}

/// SPKI DER of a fixture key's public half. Handles the EC fixture too, by
/// lifting the public point out of its PKCS#8 (no EC crate needed).
pub fn spki_der(name: &str) -> Result<Vec<u8>> {
    if name == "not-rsa-p256" {
        let der = pem_der(name)?;
        // ECPrivateKey ends with `[1] { BIT STRING 0x00 0x04 X Y }`.
        let marker = [0xa1, 0x44, 0x03, 0x42, 0x00, 0x04];
        let at = der
            .windows(marker.len())
            .position(|w| w == marker)
            .context("EC public key in PKCS#8")?;
        let point = &der[at + 2..at + 2 + 0x44];
        let mut spki = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
        ];
        spki.extend_from_slice(&[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]);
        spki.extend_from_slice(point);
        return Ok(spki);
    }
    let key = private_key(name)?;
    Ok(key
        .to_public_key()
        .to_public_key_der()
        .map_err(|e| anyhow!("encoding SPKI: {e}"))?
        .as_bytes()
        .to_vec())
}

/// RSA-PSS-SHA256 (salt 32) signature by a fixture key.
pub fn sign(key_name: &str, message: &[u8]) -> Result<Vec<u8>> {
    private_key(key_name)?
        .pss_sign::<Sha256>(message)
        .map_err(|e| anyhow!("signing: {e}"))
}

pub fn fingerprint_hex(spki: &[u8]) -> String {
    Sha256::digest(spki)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    async fn reply(resp: reqwest::Response) -> Result<(StatusCode, Value)> {
        let status = resp.status();
        let text = resp.text().await?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).with_context(|| text.clone())?
        };
        Ok((status, body))
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Result<(StatusCode, Value)> {
        let mut req = self.http.get(self.url(path)).timeout(FRAME_TIMEOUT);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        Self::reply(req.send().await?).await
    }

    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut req = self.http.post(self.url(path)).timeout(FRAME_TIMEOUT);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        Self::reply(req.send().await?).await
    }

    pub async fn challenge(&self) -> Result<Vec<u8>> {
        let (status, body) = self.post("/api/v1/register/challenge", None, None).await?;
        ensure!(status == StatusCode::OK, "challenge: {status} {body}");
        unb64(body["challenge"].as_str().context("challenge field")?)
    }

    /// Registers `name` with a fresh challenge signed by `signer`, claiming
    /// the public key `key`; returns the raw reply.
    pub async fn register_with(
        &self,
        name: &str,
        pass: &str,
        key: &str,
        signer: &str,
    ) -> Result<(StatusCode, Value)> {
        let challenge = self.challenge().await?;
        let signature = sign(signer, &statements::registration_proof(name, &challenge))?;
        self.register_raw(json!({
            "username": name,
            "password": pass,
            "public_key": b64(&spki_der(key)?),
            "challenge": b64(&challenge),
            "signature": b64(&signature),
        }))
        .await
    }

    pub async fn register_raw(&self, body: Value) -> Result<(StatusCode, Value)> {
        self.post("/api/v1/register", None, Some(body)).await
    }

    /// Registers `name` with the fixture key of the same name.
    pub async fn register(&self, name: &str) -> Result<Value> {
        let (status, body) = self
            .register_with(name, &password(name), name, name)
            .await?;
        ensure!(
            status == StatusCode::CREATED,
            "register {name}: {status} {body}"
        );
        Ok(body)
    }

    pub async fn login_raw(&self, name: &str, pass: &str) -> Result<(StatusCode, Value)> {
        self.post(
            "/api/v1/login",
            None,
            Some(json!({ "username": name, "password": pass })),
        )
        .await
    }

    pub async fn login(&self, name: &str) -> Result<String> {
        let (status, body) = self.login_raw(name, &password(name)).await?;
        ensure!(status == StatusCode::OK, "login {name}: {status} {body}");
        Ok(body["token"].as_str().context("token field")?.to_owned())
    }

    /// Registers and logs in; returns the token.
    pub async fn user(&self, name: &str) -> Result<String> {
        self.register(name).await?;
        self.login(name).await
    }

    pub async fn create_room(&self, token: &str, name: &str) -> Result<i64> {
        let (status, body) = self
            .post("/api/v1/rooms", Some(token), Some(json!({ "name": name })))
            .await?;
        ensure!(
            status == StatusCode::CREATED,
            "create room: {status} {body}"
        );
        body["id"].as_i64().context("room id")
    }

    pub async fn invite(&self, token: &str, room: i64, user: &str) -> Result<()> {
        let path = format!("/api/v1/rooms/{room}/invite");
        let (status, body) = self
            .post(&path, Some(token), Some(json!({ "username": user })))
            .await?;
        ensure!(
            status == StatusCode::NO_CONTENT,
            "invite {user}: {status} {body}"
        );
        Ok(())
    }

    /// Joins an invited room; returns the room as the joiner sees it.
    pub async fn join(&self, token: &str, room: i64) -> Result<Value> {
        let (status, body) = self
            .post(&format!("/api/v1/rooms/{room}/join"), Some(token), None)
            .await?;
        ensure!(status == StatusCode::OK, "join {room}: {status} {body}");
        Ok(body)
    }

    /// Invites and joins in one go.
    pub async fn add_member(
        &self,
        owner: &str,
        room: i64,
        user: &str,
        user_token: &str,
    ) -> Result<Value> {
        self.invite(owner, room, user).await?;
        self.join(user_token, room).await
    }

    /// Opens the DM with `peer`; returns the status and the room id.
    pub async fn open_dm(&self, token: &str, peer: &str) -> Result<(StatusCode, i64)> {
        let (status, body) = self
            .post("/api/v1/dm", Some(token), Some(json!({ "username": peer })))
            .await?;
        ensure!(status.is_success(), "open dm with {peer}: {status} {body}");
        Ok((status, body["id"].as_i64().context("room id")?))
    }

    /// Connects and authenticates; returns once `ready` has arrived.
    pub async fn connect_ws(&self, token: &str) -> Result<WsClient> {
        let mut ws = self.connect_ws_raw().await?;
        ws.send_json(&json!({ "v": 1, "type": "auth", "token": token }))
            .await?;
        let ready = ws.next_frame().await?;
        ensure!(ready["type"] == "ready", "expected ready, got {ready}");
        ws.ready = ready;
        Ok(ws)
    }

    /// Connects without authenticating.
    pub async fn connect_ws_raw(&self) -> Result<WsClient> {
        let (ws, _) = tokio::time::timeout(
            FRAME_TIMEOUT,
            tokio_tungstenite::connect_async(self.ws_url()),
        )
        .await
        .context("websocket connect timed out")??;
        Ok(WsClient {
            ws,
            stash: VecDeque::new(),
            next_id: 0,
            ready: Value::Null,
        })
    }

    /// Resolves the shutdown future and waits for `run` to return.
    pub async fn shutdown(&mut self) -> Result<()> {
        if let Some(tx) = self.shutdown_tx.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(30), server)
                .await
                .context("server did not stop after shutdown")?
                .context("server task panicked")?;
        }
        Ok(())
    }

    /// Shuts down, then serves the same database again on a new port.
    pub async fn restart(mut self) -> Result<TestApp> {
        self.shutdown().await?;
        let config = self.config.clone();
        let pg = self.pg.take();
        start(self.dir, config, pg).await
    }

    /// A pool on this app's database (see `connect_db`).
    pub async fn sql(&self) -> Result<hush::store::db::Db> {
        connect_db(&self.db).await
    }
}

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A JSON WebSocket client. Frames read while looking for something else
/// are kept, in order, for later calls.
pub struct WsClient {
    pub ws: Stream,
    stash: VecDeque<Value>,
    next_id: u64,
    pub ready: Value,
}

impl WsClient {
    pub fn fresh_id(&mut self) -> String {
        self.next_id += 1;
        format!("t{}", self.next_id)
    }

    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        tokio::time::timeout(FRAME_TIMEOUT, self.ws.send(Message::text(text.to_owned())))
            .await
            .context("send timed out")??;
        Ok(())
    }

    pub async fn send_json(&mut self, frame: &Value) -> Result<()> {
        self.send_text(&frame.to_string()).await
    }

    pub async fn send_binary(&mut self, bytes: &[u8]) -> Result<()> {
        tokio::time::timeout(FRAME_TIMEOUT, self.ws.send(Message::binary(bytes.to_vec())))
            .await
            .context("send timed out")??;
        Ok(())
    }

    /// The next text frame off the wire (not the stash), parsed. Pings and
    /// pongs are skipped; a close is an error naming its code.
    async fn read_frame(&mut self) -> Result<Value> {
        for _ in 0..MAX_FRAMES {
            let msg = tokio::time::timeout(FRAME_TIMEOUT, self.ws.next())
                .await
                .context("no frame within the timeout")?
                .context("connection ended")??;
            match msg {
                Message::Text(text) => {
                    return serde_json::from_str(&text).with_context(|| text.to_string());
                }
                Message::Close(frame) => {
                    bail!("connection closed: {:?}", frame.map(|f| u16::from(f.code)))
                }
                Message::Binary(_) => bail!("unexpected binary frame"),
                _ => continue,
            }
        }
        bail!("too many control frames")
    }

    /// The next frame, stashed ones first.
    pub async fn next_frame(&mut self) -> Result<Value> {
        match self.stash.pop_front() {
            Some(frame) => Ok(frame),
            None => self.read_frame().await,
        }
    }

    /// The first frame (stashed or new) matching `pred`; others are kept.
    pub async fn expect(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        if let Some(at) = self.stash.iter().position(&pred) {
            return Ok(self.stash.remove(at).expect("position is in range"));
        }
        for _ in 0..MAX_FRAMES {
            let frame = self
                .read_frame()
                .await
                .with_context(|| format!("waiting for {what}"))?;
            if pred(&frame) {
                return Ok(frame);
            }
            self.stash.push_back(frame);
        }
        bail!("{what} did not arrive within {MAX_FRAMES} frames")
    }

    pub async fn expect_type(&mut self, kind: &str) -> Result<Value> {
        self.expect(kind, |f| f["type"] == kind).await
    }

    /// The reply (any type) to the frame sent with `id`.
    pub async fn reply_to(&mut self, id: &str) -> Result<Value> {
        self.expect(&format!("reply to {id}"), |f| f["id"] == id)
            .await
    }

    /// Sends `frame` with a fresh `id` and returns the reply carrying it.
    pub async fn request(&mut self, mut frame: Value) -> Result<Value> {
        let id = self.fresh_id();
        frame["id"] = json!(id);
        frame["v"] = json!(1);
        self.send_json(&frame).await?;
        self.reply_to(&id).await
    }

    /// Sends a message; returns its `ack` (or whatever came back instead).
    pub async fn send_message(&mut self, room: i64, client_id: &str, body: &[u8]) -> Result<Value> {
        self.request(
            json!({ "type": "send", "room": room, "client_id": client_id, "body": b64(body) }),
        )
        .await
    }

    pub async fn send_ok(&mut self, room: i64, client_id: &str, body: &[u8]) -> Result<i64> {
        let ack = self.send_message(room, client_id, body).await?;
        ensure!(ack["type"] == "ack", "expected ack, got {ack}");
        ack["seq"].as_i64().context("ack seq")
    }

    /// The next live `entry` of `room`.
    pub async fn next_entry(&mut self, room: i64) -> Result<Value> {
        let frame = self
            .expect("entry", |f| {
                f["type"] == "entry" && f["entry"]["room"] == room
            })
            .await?;
        Ok(frame["entry"].clone())
    }

    /// Syncs one room from `after`; returns the page entries and the
    /// `synced` seq. Live entries that arrive meanwhile stay stashed.
    pub async fn sync(&mut self, room: i64, after: i64) -> Result<(Vec<Value>, i64)> {
        self.send_json(
            &json!({ "v": 1, "type": "sync", "rooms": [{ "room": room, "after": after }] }),
        )
        .await?;
        let mut entries = Vec::new();
        for _ in 0..MAX_FRAMES {
            let frame = self
                .expect("page or synced", |f| {
                    (f["type"] == "page" || f["type"] == "synced") && f["room"] == room
                        || f["type"] == "error" && f["id"].is_null()
                })
                .await?;
            match frame["type"].as_str() {
                Some("page") => entries.extend(
                    frame["entries"]
                        .as_array()
                        .context("entries")?
                        .iter()
                        .cloned(),
                ),
                Some("synced") => {
                    return Ok((entries, frame["seq"].as_i64().context("synced seq")?));
                }
                _ => bail!("sync failed: {frame}"),
            }
        }
        bail!("sync did not finish")
    }

    /// Takes out the live `entry` frames of `room` received so far and not
    /// yet read. Right after `sync`, those are the ones pushed before the
    /// sync started, which the protocol allows to repeat what the pages
    /// hold (PROTOCOL.md §10, "Dedupe anyway"); live entries from then on
    /// must continue exactly after `synced`.
    pub fn take_stashed_entries(&mut self, room: i64) -> Vec<Value> {
        let (taken, kept): (VecDeque<Value>, VecDeque<Value>) = self
            .stash
            .drain(..)
            .partition(|f| f["type"] == "entry" && f["entry"]["room"] == room);
        self.stash = kept;
        taken.into()
    }

    pub async fn history(
        &mut self,
        room: i64,
        before: Option<i64>,
        limit: Option<u32>,
    ) -> Result<Value> {
        self.request(json!({ "type": "history", "room": room, "before": before, "limit": limit }))
            .await
    }

    pub async fn ping(&mut self) -> Result<()> {
        let pong = self.request(json!({ "type": "ping" })).await?;
        ensure!(pong["type"] == "pong", "expected pong, got {pong}");
        Ok(())
    }

    /// Round-trips a ping and returns every frame that came before the
    /// pong, stashed ones included. The server forwards queued frames
    /// before it reads the next client frame, so anything committed for
    /// this user before the ping was sent shows up here.
    pub async fn drain(&mut self) -> Result<Vec<Value>> {
        self.ping().await?;
        Ok(self.stash.drain(..).collect())
    }

    /// Fails if any log entry or page reached this connection.
    pub async fn assert_no_entries(&mut self) -> Result<()> {
        let frames = self.drain().await?;
        let entries: Vec<_> = frames
            .iter()
            .filter(|f| f["type"] == "entry" || f["type"] == "page")
            .collect();
        ensure!(entries.is_empty(), "unexpected entries: {entries:?}");
        Ok(())
    }

    /// Reads until the server closes; returns the close code (`None` if
    /// the connection ended without a close frame).
    pub async fn expect_close(&mut self) -> Result<Option<u16>> {
        for _ in 0..MAX_FRAMES {
            let msg = tokio::time::timeout(FRAME_TIMEOUT, self.ws.next())
                .await
                .context("no close within the timeout")?;
            match msg {
                Some(Ok(Message::Close(frame))) => return Ok(frame.map(|f| u16::from(f.code))),
                Some(Ok(Message::Text(text))) => self.stash.push_back(serde_json::from_str(&text)?),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Ok(None),
            }
        }
        bail!("no close after {MAX_FRAMES} frames")
    }

    /// Closes from our side and waits for the server to finish the handshake.
    pub async fn close(mut self) -> Result<()> {
        let _ = self.ws.close(None).await;
        for _ in 0..MAX_FRAMES {
            match tokio::time::timeout(FRAME_TIMEOUT, self.ws.next())
                .await
                .context("close timed out")?
            {
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Ok(()),
            }
        }
        bail!("connection did not end")
    }
}

impl TestApp {
    /// Registers and logs in each user; returns their tokens in order.
    pub async fn users(&self, names: &[&str]) -> Result<Vec<String>> {
        let mut tokens = Vec::with_capacity(names.len());
        for name in names {
            tokens.push(self.user(name).await?);
        }
        Ok(tokens)
    }

    /// A group room created by `owner` with each `(name, token)` member joined.
    pub async fn group(&self, owner: &str, members: &[(&str, &str)]) -> Result<i64> {
        let room = self.create_room(owner, "test room").await?;
        for (name, token) in members {
            self.add_member(owner, room, name, token).await?;
        }
        Ok(room)
    }
}

/// Seqs of message entries, in order.
pub fn message_seqs(entries: &[Value]) -> Vec<i64> {
    entries
        .iter()
        .filter(|e| e["kind"] == "message")
        .map(|e| e["seq"].as_i64().unwrap_or(-1))
        .collect()
}
