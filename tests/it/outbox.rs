//! Nothing typed is lost, and it is stored in the order typed: the real
//! `hush` binary against `hush serve` with its rate limits. A long paste
//! into `hush chat` at full speed on default limits; `/quit` with messages
//! still queued keeps them, sealed, in the outbox, and the next run sends
//! them once each, in order.

use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli_support::{HUSH, fixture_key_store, hush, hush_command, ok};
use crate::support::server_db;
use anyhow::{Context, Result, bail, ensure};
use hush::client::outbox::outbox_path;
use serde_json::Value;

const METRICS_TOKEN: &str = "outbox-test-metrics";

/// `hush serve` as a child process on a free loopback port, killed on drop.
struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(extra: &[&str]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await?
            .local_addr()?
            .port();
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let child = Command::new(HUSH)
            .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
            .args(["--metrics-token", METRICS_TOKEN])
            .arg("--db")
            .arg(server_db(&dir.path().join("data/hush.db"))?)
            .args(extra)
            .env_remove("HUSH_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let server = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let client = hush::client::tls::http_client();
        for _ in 0..300 {
            if let Ok(r) = client.get(format!("{}/healthz", server.url)).send().await
                && r.status().is_success()
            {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("hush serve did not become healthy")
    }

    /// `hush_rate_limited_total` by limit, from `/metrics`.
    async fn refusals(&self) -> Result<Vec<(String, u64)>> {
        let text = hush::client::tls::http_client()
            .get(format!("{}/metrics", self.url))
            .bearer_auth(METRICS_TOKEN)
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter_map(|line| line.strip_prefix("hush_rate_limited_total{"))
            .filter_map(|rest| {
                let (labels, value) = rest.split_once("} ")?;
                Some((labels.to_owned(), value.trim().parse().ok()?))
            })
            .collect())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `hush chat` as `user`, its output gathered from the start (so it never
/// blocks on a full pipe).
fn chat(url: &str, keys: &Path, user: &str) -> Result<(Child, ChildStdin, Lines)> {
    let mut child = hush_command(url, keys, user)
        .arg("chat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let input = child.stdin.take().context("chat stdin")?;
    let out = Lines::from(child.stdout.take().context("chat stdout")?);
    Ok((child, input, out))
}

/// The texts of the messages `reader` sees in the DM with `with`, in log
/// order; fails if any is rejected or arrived late.
fn read_dm(url: &str, keys: &Path, reader: &str, with: &str) -> Result<Vec<String>> {
    let read = ok(hush(
        url,
        keys,
        reader,
        &["read", "--with", with, "--json"],
    )?)?;
    let mut texts = Vec::new();
    for line in read.lines() {
        let item: Value = serde_json::from_str(line)?;
        ensure!(item["kind"] != "rejected", "a message was rejected: {item}");
        if item["kind"] == "message" {
            ensure!(item["late"] != true, "a message arrived late: {item}");
            texts.push(item["text"].as_str().context("text")?.to_owned());
        }
    }
    Ok(texts)
}

/// Lines a child process prints, gathered by a thread.
struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn from(stdout: std::process::ChildStdout) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits up to `limit` for a line containing `needle`.
    fn wait_for(&mut self, needle: &str, limit: Duration) -> Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Err(_) => bail!(
                    "no line containing {needle:?}; the last ones:\n{}",
                    self.seen[self.seen.len().saturating_sub(40)..].join("\n")
                ),
            }
        }
    }

    /// Every line until the process closes its output.
    fn rest(&mut self) -> &[String] {
        while let Ok(line) = self.rx.recv_timeout(Duration::from_secs(30)) {
            self.seen.push(line);
        }
        &self.seen
    }
}

/// Waits up to `limit` for the child to exit.
fn wait_exit(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_lines_piped_into_hush_chat_on_default_limits_are_stored_once_in_order()
-> Result<()> {
    const LINES: usize = 2000;
    let server = Server::start(&[]).await?;
    let home = tempfile::tempdir()?;
    let keys = fixture_key_store(&server.url, home.path(), &["alice", "bob"])?;
    let url = server.url.clone();
    ok(hush(
        &url,
        &keys,
        "alice",
        &["send", "--to", "bob", "before the paste"],
    )?)?;

    let started = Instant::now();
    let (mut child, mut input, mut out) = chat(&url, &keys, "alice")?;
    let paste: String = (1..=LINES)
        .map(|i| format!("line {i:04} of the paste\n"))
        .collect();
    // At full speed, then end of input: hush chat must wait for all of it.
    let writer = std::thread::spawn(move || input.write_all(paste.as_bytes()));
    out.wait_for("waiting to send", Duration::from_secs(120))?;
    out.wait_for("all messages sent", Duration::from_secs(600))?;
    let status = wait_exit(&mut child, Duration::from_secs(30))?;
    let took = started.elapsed();
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    ensure!(
        status.success(),
        "hush chat exits once all is sent: {status}"
    );
    let seen = out.rest();
    ensure!(
        !seen.iter().any(|l| l.starts_with("! ")),
        "no problem reported: {:?}",
        seen.iter()
            .filter(|l| l.starts_with("! "))
            .collect::<Vec<_>>()
    );

    let texts = read_dm(&url, &keys, "bob", "alice")?;
    let mut expected = vec!["before the paste".to_owned()];
    expected.extend((1..=LINES).map(|i| format!("line {i:04} of the paste")));
    ensure!(
        texts.len() == expected.len(),
        "every line stored exactly once: {} messages, expected {}",
        texts.len(),
        expected.len()
    );
    ensure!(texts == expected, "stored in the order typed");
    let refusals = server.refusals().await?;
    let status_lines = seen
        .iter()
        .filter(|l| l.contains("waiting to send"))
        .count();
    println!(
        "{LINES} lines in {took:.1?}; refusals by limit: {refusals:?}; {status_lines} status lines"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn quitting_twice_keeps_queued_lines_sealed_and_the_next_run_sends_them_once_in_order()
-> Result<()> {
    const LINES: usize = 12;
    let server = Server::start(&["--message-rate", "2/s:2"]).await?;
    let home = tempfile::tempdir()?;
    let keys = fixture_key_store(&server.url, home.path(), &["alice", "bob"])?;
    let url = server.url.clone();
    ok(hush(
        &url,
        &keys,
        "alice",
        &["send", "--to", "bob", "before"],
    )?)?;

    let lines: Vec<String> = (1..=LINES)
        .map(|i| format!("queued {i:02} zebra-marker"))
        .collect();
    let (mut child, mut input, mut out) = chat(&url, &keys, "alice")?;
    for line in &lines {
        writeln!(input, "{line}")?;
    }
    writeln!(input, "/quit")?;
    let waiting = out.wait_for("waiting to send…", Duration::from_secs(30))?;
    writeln!(input, "/quit")?;
    let kept = out.wait_for("kept in the outbox", Duration::from_secs(30))?;
    let status = wait_exit(&mut child, Duration::from_secs(30))?;
    ensure!(status.success(), "{status}");
    drop(input);
    let out_first = out.rest().to_vec();
    let count: usize = kept
        .trim_start_matches("* ")
        .split(' ')
        .next()
        .context("a count")?
        .parse()?;
    ensure!(
        (1..=LINES).contains(&count),
        "{waiting:?} then {kept:?}: some of the {LINES} lines are kept"
    );
    ensure!(
        kept.contains("will be sent the next time you run hush chat or hush send as alice"),
        "{kept}"
    );

    let path = outbox_path(&keys, "alice");
    let bytes = std::fs::read(&path).context("the outbox file is there")?;
    ensure!(bytes.len() > count * 16, "it holds the queued messages");
    for needle in [&b"zebra-marker"[..], b"queued"] {
        ensure!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "the outbox holds no plaintext ({:?})",
            String::from_utf8_lossy(needle)
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
        ensure!(mode == 0o600, "the outbox is private: {mode:o}");
    }

    // The next run: `/quit` at once, and it waits for the earlier lines.
    let (mut child, mut input, mut out) = chat(&url, &keys, "alice")?;
    out.wait_for(
        &format!("{count} message(s) left from an earlier run"),
        Duration::from_secs(30),
    )?;
    writeln!(input, "/quit")?;
    drop(input);
    out.wait_for("waiting to send…", Duration::from_secs(30))?;
    out.wait_for("all messages sent", Duration::from_secs(120))?;
    let status = wait_exit(&mut child, Duration::from_secs(30))?;
    ensure!(status.success(), "{status}");
    println!("first run:\n{}", out_first.join("\n"));
    println!("second run:\n{}", out.rest().join("\n"));

    let texts = read_dm(&url, &keys, "bob", "alice")?;
    let mut expected = vec!["before".to_owned()];
    expected.extend(lines);
    ensure!(
        texts == expected,
        "each line stored once, in order: {texts:#?}"
    );
    Ok(())
}
