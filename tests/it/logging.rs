//! `--log-format json`: every line a JSON object, and nothing secret in
//! them (password, session token, message body), even at trace level. Also
//! the start-up warning for open registration beyond loopback, and a
//! quiet log at `warn` while clients come and go.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::crash::HushProcess;
use crate::support::{FRAME_TIMEOUT, b64, server_db, sign, spki_der, unb64};

const HUSH: &str = env!("CARGO_BIN_EXE_hush");

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_parse_line_by_line_and_hold_no_secret() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(HUSH)
        .args([
            "serve",
            "--addr",
            "0.0.0.0:0",
            "--log-format",
            "json",
            "--log-level",
            "trace",
        ])
        .arg("--db")
        .arg(server_db(&dir.path().join("hush.db"))?)
        .env_remove("HUSH_LOG")
        .env_remove("HUSH_REGISTRATION")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });

    let password = "PASSWORD-MARKER-4b1d-secret";
    let body_marker = b"BODY-MARKER-c0ffee-plaintext";
    let outcome = async {
        // The listening line tells the port (the server bound port 0).
        let mut lines = Vec::new();
        let port = loop {
            let line = line_rx
                .recv_timeout(Duration::from_secs(30))
                .context("no listening line")?;
            let parsed: Value = serde_json::from_str(&line).with_context(|| line.clone())?;
            lines.push(line);
            if let Some(addr) = parsed["fields"]["addr"].as_str() {
                break addr.rsplit(':').next().context("port")?.parse::<u16>()?;
            }
        };
        let base = format!("http://127.0.0.1:{port}");
        let http = hush::client::tls::http_client();
        let challenge: Value = http.post(format!("{base}/api/v1/register/challenge")).send().await?.json().await?;
        let challenge = unb64(challenge["challenge"].as_str().context("challenge")?)?;
        let signature = sign("alice", &hush::crypto::statements::registration_proof("alice", &challenge))?;
        let status = http
            .post(format!("{base}/api/v1/register"))
            .json(&json!({ "username": "alice", "password": password, "public_key": b64(&spki_der("alice")?),
                "challenge": b64(&challenge), "signature": b64(&signature) }))
            .send()
            .await?
            .status();
        ensure!(status.as_u16() == 201, "register: {status}");
        let login: Value = http
            .post(format!("{base}/api/v1/login"))
            .json(&json!({ "username": "alice", "password": password }))
            .send()
            .await?
            .json()
            .await?;
        let token = login["token"].as_str().context("token")?.to_owned();
        let wrong = http
            .post(format!("{base}/api/v1/login"))
            .json(&json!({ "username": "alice", "password": format!("{password}-wrong") }))
            .send()
            .await?;
        ensure!(wrong.status().as_u16() == 401);
        let room: Value = http
            .post(format!("{base}/api/v1/rooms"))
            .bearer_auth(&token)
            .json(&json!({ "name": "logs" }))
            .send()
            .await?
            .json()
            .await?;
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws")).await?;
        ws.send(Message::text(json!({ "v": 1, "type": "auth", "token": token }).to_string())).await?;
        ws.send(Message::text(
            json!({ "v": 1, "id": "s1", "type": "send", "room": room["id"], "client_id": "c1", "body": b64(body_marker) })
                .to_string(),
        ))
        .await?;
        let mut acked = false;
        for _ in 0..20 {
            let msg = tokio::time::timeout(FRAME_TIMEOUT, ws.next()).await?.context("closed")??;
            if msg.is_text() && serde_json::from_str::<Value>(msg.to_text()?)?["type"] == "ack" {
                acked = true;
                break;
            }
        }
        ensure!(acked, "the message was acknowledged");
        ws.close(None).await?;
        Ok::<_, anyhow::Error>((lines, token))
    }
    .await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    let status = child.wait()?;
    let _ = reader.join();
    let (mut lines, token) = outcome?;
    lines.extend(line_rx.try_iter());
    ensure!(status.success(), "hush serve exits 0: {status}");

    ensure!(lines.len() > 10, "trace level logs a lot: {}", lines.len());
    for line in &lines {
        let parsed: Value =
            serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
        ensure!(
            parsed["level"].is_string() && parsed["timestamp"].is_string(),
            "{line}"
        );
        for secret in [
            password,
            token.as_str(),
            std::str::from_utf8(body_marker)?,
            b64(body_marker).as_str(),
        ] {
            if line.contains(secret) {
                bail!("a secret leaked into the log: {line}");
            }
        }
    }
    let warned = lines.iter().any(|l| {
        l.contains("\"WARN\"")
            && l.contains("registration is open")
            && l.contains("beyond loopback")
    });
    ensure!(
        warned,
        "open registration on 0.0.0.0 is warned about:\n{}",
        lines.join("\n")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn invite_mode_on_loopback_starts_without_the_open_registration_warning() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(HUSH)
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--log-format",
            "text",
            "--registration",
            "invite",
        ])
        .arg("--db")
        .arg(server_db(&dir.path().join("hush.db"))?)
        .env_remove("HUSH_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let found = loop {
        match lines.next() {
            Some(line) => {
                let line = line?;
                let done = line.contains("hush listening");
                seen.push(line);
                if done {
                    break true;
                }
            }
            None => break false,
        }
    };
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    child.wait()?;
    ensure!(found, "{seen:?}");
    ensure!(
        seen.iter().any(|l| l.contains("Invite")),
        "the mode is logged: {seen:?}"
    );
    ensure!(
        !seen.iter().any(|l| l.contains("registration is open")),
        "{seen:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn at_warn_level_websocket_traffic_and_closes_log_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Runs `hush serve --log-level warn` with its stderr in server.log.
    let server = HushProcess::start(dir.path(), &[]).await?;
    let url = format!("ws://{}/ws", server.addr);
    let outcome = async {
        for close_first in [true, false] {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
            if close_first {
                // A client that closes before authenticating.
                ws.close(None).await?;
            } else {
                // A bad token: the server answers and closes.
                ws.send(Message::text(
                    json!({ "v": 1, "type": "auth", "token": "nope" }).to_string(),
                ))
                .await?;
            }
            while let Ok(Some(Ok(_))) = tokio::time::timeout(FRAME_TIMEOUT, ws.next()).await {}
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    server.terminate()?;
    outcome?;
    let log_path = dir.path().join("server.log");
    let log = std::fs::read_to_string(&log_path)?;
    ensure!(log.is_empty(), "nothing is logged at warn:\n{log}");
    Ok(())
}
