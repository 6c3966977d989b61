//! TLS: HTTPS and WSS with a throwaway self-signed certificate, reload
//! without restart (on file change and on SIGHUP), a bad new certificate
//! keeping the old one, stalled handshakes not blocking anyone, and the
//! terminal client talking to a TLS server with `--ca-cert`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use hush::certificate::TlsReloader;
use hush::config::ServerConfig;
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{FRAME_TIMEOUT, b64, open_store, password, server_db, sign, spki_der};

const HUSH: &str = env!("CARGO_BIN_EXE_hush");

/// A fresh self-signed certificate for 127.0.0.1, written as PEM files.
struct Cert {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

fn new_cert() -> Result<Cert> {
    let made =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    Ok(Cert {
        cert_pem: made.cert.pem(),
        key_pem: made.signing_key.serialize_pem(),
        der: made.cert.der().to_vec(),
    })
}

impl Cert {
    fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&key, &self.key_pem)?;
        std::fs::write(&cert, &self.cert_pem)?;
        Ok((cert, key))
    }

    fn ca_file(&self, dir: &Path, name: &str) -> Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, &self.cert_pem)?;
        Ok(path)
    }

    /// A client config that trusts this certificate only.
    fn client(&self, dir: &Path, name: &str) -> Result<rustls::ClientConfig> {
        hush::client::tls::trusting(&self.ca_file(dir, name)?)
    }
}

struct TlsServer {
    addr: SocketAddr,
    tls: TlsReloader,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

async fn start(dir: &Path, cert: &Cert) -> Result<TlsServer> {
    let (cert_path, key_path) = cert.write(dir)?;
    let tls = TlsReloader::load_checking_every(&cert_path, &key_path, Duration::from_millis(50))?;
    let store = open_store(&server_db(&dir.join("hush.db"))?).await?;
    let listener = hush::server::bind("127.0.0.1:0".parse()?)?;
    let addr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    let config = ServerConfig {
        tls: Some(tls.clone()),
        ..ServerConfig::default()
    };
    let server = tokio::spawn(hush::server::run(listener, store, config, async move {
        let _ = rx.await;
    }));
    Ok(TlsServer {
        addr,
        tls,
        shutdown: Some(tx),
        server,
    })
}

impl TlsServer {
    async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.server).await??;
        Ok(())
    }
}

/// Completes a TLS handshake and returns the leaf certificate the server showed.
async fn handshake(addr: SocketAddr, client: rustls::ClientConfig) -> Result<Vec<u8>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let name = ServerName::try_from("127.0.0.1")?.to_owned();
    let stream = tokio::time::timeout(FRAME_TIMEOUT, connector.connect(name, tcp))
        .await
        .context("handshake timed out")??;
    let (_, conn) = stream.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .context("no certificate")?;
    Ok(leaf.to_vec())
}

fn https(client: rustls::ClientConfig) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(client)
        .timeout(FRAME_TIMEOUT)
        .build()?)
}

async fn register_and_login(http: &reqwest::Client, base: &str, name: &str) -> Result<String> {
    let challenge: Value = http
        .post(format!("{base}/api/v1/register/challenge"))
        .send()
        .await?
        .json()
        .await?;
    let challenge = crate::support::unb64(challenge["challenge"].as_str().context("challenge")?)?;
    let signature = sign(
        name,
        &hush::crypto::statements::registration_proof(name, &challenge),
    )?;
    let status = http
        .post(format!("{base}/api/v1/register"))
        .json(&json!({
            "username": name, "password": password(name), "public_key": b64(&spki_der(name)?),
            "challenge": b64(&challenge), "signature": b64(&signature),
        }))
        .send()
        .await?
        .status();
    anyhow::ensure!(status.as_u16() == 201, "register: {status}");
    let login: Value = http
        .post(format!("{base}/api/v1/login"))
        .json(&json!({ "username": name, "password": password(name) }))
        .send()
        .await?
        .json()
        .await?;
    Ok(login["token"].as_str().context("token")?.to_owned())
}

#[tokio::test]
async fn https_and_wss_work_for_a_client_that_trusts_the_certificate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cert = new_cert()?;
    let server = start(dir.path(), &cert).await?;
    let base = format!("https://127.0.0.1:{}", server.addr.port());
    let http = https(cert.client(dir.path(), "ca.pem")?)?;
    // On PostgreSQL the status is "degraded" until the node's listener has
    // connected: wait for "ok", at most 15 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let health = loop {
        let health: Value = http
            .get(format!("{base}/healthz"))
            .send()
            .await?
            .json()
            .await?;
        if health["status"] == "ok" || std::time::Instant::now() > deadline {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(health["status"], "ok", "{health}");
    let token = register_and_login(&http, &base, "alice").await?;

    let connector =
        tokio_tungstenite::Connector::Rustls(Arc::new(cert.client(dir.path(), "ca2.pem")?));
    let url = format!("wss://127.0.0.1:{}/ws", server.addr.port());
    let (mut ws, _) = tokio::time::timeout(
        FRAME_TIMEOUT,
        tokio_tungstenite::connect_async_tls_with_config(url, None, true, Some(connector)),
    )
    .await??;
    ws.send(Message::text(
        json!({ "v": 1, "type": "auth", "token": token }).to_string(),
    ))
    .await?;
    let ready = tokio::time::timeout(FRAME_TIMEOUT, ws.next())
        .await?
        .context("closed")??;
    let ready: Value = serde_json::from_str(ready.to_text()?)?;
    assert_eq!(ready["type"], "ready", "{ready}");
    assert_eq!(ready["user"], "alice");

    // Plain HTTP to the TLS port gets nothing useful, and an untrusting
    // client refuses the self-signed certificate.
    let plain = hush::client::tls::http_client()
        .get(format!("http://127.0.0.1:{}/healthz", server.addr.port()))
        .timeout(FRAME_TIMEOUT)
        .send()
        .await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    let other = new_cert()?;
    assert!(
        handshake(server.addr, other.client(dir.path(), "other.pem")?)
            .await
            .is_err()
    );
    server.stop().await
}

#[tokio::test]
async fn a_stalled_or_garbage_handshake_does_not_hold_up_other_clients() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cert = new_cert()?;
    let server = start(dir.path(), &cert).await?;
    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(tokio::net::TcpStream::connect(server.addr).await?);
    }
    let mut garbage = tokio::net::TcpStream::connect(server.addr).await?;
    garbage
        .write_all(b"GET / HTTP/1.1\r\n\r\nnot tls at all")
        .await?;
    let leaf = handshake(server.addr, cert.client(dir.path(), "ca.pem")?).await?;
    assert_eq!(leaf, cert.der);
    drop(stalled);
    server.stop().await
}

#[tokio::test]
async fn a_changed_certificate_is_served_without_restart_and_a_bad_one_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let first = new_cert()?;
    let server = start(dir.path(), &first).await?;
    assert_eq!(
        handshake(server.addr, first.client(dir.path(), "a.pem")?).await?,
        first.der
    );

    let second = new_cert()?;
    second.write(dir.path())?;
    let trusts_second = second.client(dir.path(), "b.pem")?;
    let mut seen = None;
    for _ in 0..200 {
        if let Ok(leaf) = handshake(server.addr, trusts_second.clone()).await {
            seen = Some(leaf);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        seen.as_deref(),
        Some(second.der.as_slice()),
        "the new certificate is served"
    );

    // A broken certificate file: the reload fails and the current one stays.
    std::fs::write(
        dir.path().join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nnope\n",
    )?;
    assert!(server.tls.reload().is_err());
    assert_eq!(handshake(server.addr, trusts_second).await?, second.der);
    server.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn hush_serve_reloads_its_certificate_on_sighup_and_the_cli_talks_https_and_wss() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let first = new_cert()?;
    let (cert_path, key_path) = first.write(dir.path())?;
    let port = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await?
        .local_addr()?
        .port();
    let mut child = Command::new(HUSH)
        .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .arg("--db")
        .arg(server_db(&dir.path().join("data/hush.db"))?)
        .arg("--tls-cert")
        .arg(&cert_path)
        .arg("--tls-key")
        .arg(&key_path)
        .env_remove("HUSH_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let result = async {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let base = format!("https://127.0.0.1:{port}");
        let http = https(first.client(dir.path(), "a.pem")?)?;
        let mut healthy = false;
        for _ in 0..300 {
            if http
                .get(format!("{base}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                healthy = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::ensure!(healthy, "hush serve did not come up over https");

        // The terminal client, over https and wss, trusting the CA file.
        let ca = first.ca_file(dir.path(), "ca.pem")?;
        let keys = dir.path().join("keys");
        let run = |args: &[&str]| -> Result<String> {
            let out = Command::new(HUSH)
                .args(args)
                .arg("--ca-cert")
                .arg(&ca)
                .env("HUSH_SERVER", &base)
                .env("HUSH_KEYS", &keys)
                .env("HUSH_USER", "alice")
                .env("HUSH_PASSPHRASE", "passphrase of alice")
                .env("HUSH_PASSWORD", "password of alice")
                .stdin(Stdio::null())
                .output()?;
            if !out.status.success() {
                bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(String::from_utf8(out.stdout)?)
        };
        run(&["keys", "new", "alice", "--bits", "2048"])?;
        run(&["register"])?;
        run(&["room", "create", "general"])?;
        run(&["send", "--room", "general", "hello over tls"])?;
        let read = run(&["read", "--room", "general"])?;
        anyhow::ensure!(read.contains("alice: hello over tls"), "{read}");

        // New files, then SIGHUP: new handshakes present the new certificate.
        let second = new_cert()?;
        second.write(dir.path())?;
        Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()?;
        let trusts_second = second.client(dir.path(), "b.pem")?;
        for _ in 0..100 {
            if let Ok(leaf) = handshake(addr, trusts_second.clone()).await {
                anyhow::ensure!(leaf == second.der);
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the new certificate was not served after SIGHUP")
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}
