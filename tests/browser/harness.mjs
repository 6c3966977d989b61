// Shared pieces of the browser tests: the real `target/debug/hush` binary
// (server and command-line client), Debian's Chromium through
// playwright-core, and helpers to drive the page as a person would.

import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const HUSH = process.env.HUSH_BIN ?? join(ROOT, "target", "debug", "hush");
export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
export const SCREENSHOTS = join(ROOT, "target", "browser-screenshots");
const WAIT_MS = 20_000;

export function tempDir(prefix) {
  return mkdtempSync(join(tmpdir(), `hush-browser-${prefix}-`));
}

/**
 * `hush serve` on a fresh port (or `port`, to restart on the same one) with
 * the database in `dir`, plus any `args` (e.g. `["--message-rate", "1/s:2"]`).
 * Resolves once the server logs its address.
 */
export async function startServer(dir = tempDir("server"), port = 0, args = []) {
  const child = spawn(HUSH, ["serve", "--addr", `127.0.0.1:${port}`, "--db", join(dir, "hush.db"), "--log-level", "info", ...args], {
    stdio: ["ignore", "ignore", "pipe"],
    env: { ...process.env, HUSH_LOG: "", NO_COLOR: "1" },
  });
  let log = "";
  const url = await new Promise((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error(`hush serve did not start:\n${log}`)), WAIT_MS);
    child.stderr.on("data", (chunk) => {
      log += chunk;
      const found = log.match(/listening on (http:\/\/127\.0\.0\.1:\d+)/);
      if (found) {
        clearTimeout(timer);
        resolveUrl(found[1]);
      }
    });
    child.on("exit", (code) => reject(new Error(`hush serve exited with ${code}:\n${log}`)));
  });
  return {
    url,
    port: Number(new URL(url).port),
    dir,
    db: join(dir, "hush.db"),
    log: () => log,
    /** SIGTERM and wait for a clean exit. */
    stop: () => new Promise((done) => {
      if (child.exitCode !== null) return done(child.exitCode);
      const timer = setTimeout(() => child.kill("SIGKILL"), WAIT_MS);
      child.on("exit", (code) => {
        clearTimeout(timer);
        done(code);
      });
      child.kill("SIGTERM");
    }),
  };
}

/** A server for test `t` alone, stopped when the test ends (however it ends). */
export async function ownServer(t, dir, port, args) {
  const server = await startServer(dir, port, args);
  t.after(async () => {
    await server.stop();
    if (!dir) removeDir(server.dir);
  });
  return server;
}

/** Runs a `hush` client command as `user` with its own key store. */
export function hush(server, keysDir, user, args) {
  const result = spawnSync(HUSH, args, {
    env: {
      ...process.env,
      HUSH_SERVER: server.url,
      HUSH_KEYS: keysDir,
      HUSH_USER: user,
      HUSH_PASSPHRASE: `passphrase of ${user}`,
      HUSH_PASSWORD: `password of ${user}`,
    },
    encoding: "utf8",
    timeout: 60_000,
    stdio: ["ignore", "pipe", "pipe"],
  });
  if (result.status !== 0) throw new Error(`hush ${args.join(" ")} failed (${result.status}):\n${result.stdout}\n${result.stderr}`);
  return result.stdout;
}

export async function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run",
      // HUSH_WEB_DIR: a page fulfilled by the test has no address space, so
      // Chromium would block its WebSocket to 127.0.0.1.
      ...(process.env.HUSH_WEB_DIR ? ["--disable-features=LocalNetworkAccessChecks"] : []),
    ],
  });
}

/**
 * A fresh browser context (its own IndexedDB) on the server's page. Every
 * request the page makes is recorded, so tests can check no other host is
 * contacted; page errors fail the test.
 */
export async function openPage(browser, server, options = {}) {
  // HUSH_WEB_DIR: no service worker, whose requests would bypass the
  // route and bring the binary's files back (offline reloads then fail).
  const workers = process.env.HUSH_WEB_DIR ? { serviceWorkers: "block" } : {};
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 }, acceptDownloads: true, ...workers, ...options });
  return openPageIn(context, server);
}

/** Another page (a tab) in `context`: same IndexedDB, so the same signed-in user. */
export async function openPageIn(context, server) {
  if (process.env.HUSH_WEB_DIR && !context.servesWebDir) await serveWebDir(context, server, process.env.HUSH_WEB_DIR);
  const page = await context.newPage();
  page.requests = [];
  page.errors = [];
  page.on("request", (r) => page.requests.push(r.url()));
  page.on("pageerror", (e) => page.errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && page.errors.push(m.text()));
  await page.goto(server.url + "/");
  return page;
}

/**
 * Development only: HUSH_WEB_DIR=web serves the page's files from that
 * folder instead of the binary's embedded copy (same headers), to iterate
 * on web/ without rebuilding `hush`. Results count only without it.
 */
async function serveWebDir(context, server, dir) {
  context.servesWebDir = true;
  await context.route(`${server.url}/**`, async (route) => {
    const path = new URL(route.request().url()).pathname;
    const file = join(dir, path === "/" ? "index.html" : path.slice(1));
    if (path.startsWith("/api/") || path === "/ws" || !existsSync(file)) return route.continue();
    const response = await route.fetch();
    if (response.status() === 404) {
      // A file the binary does not embed yet: same headers as the page's own scripts.
      const like = await route.fetch({ url: `${server.url}/js/app.js` });
      const type = { ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml" }[path.slice(path.lastIndexOf("."))] ?? "application/octet-stream";
      return route.fulfill({ response: like, headers: { ...like.headers(), "content-type": type }, body: readFileSync(file) });
    }
    return route.fulfill({ response, body: readFileSync(file) });
  });
}

/** Fills the "Create account" form; resolves when the chat view shows. */
export async function registerInPage(page, username, { bits = "2048" } = {}) {
  await page.locator("#reg-username").fill(username);
  await page.locator("#reg-password").fill(`password of ${username}`);
  await page.locator("#reg-passphrase").fill(`passphrase of ${username}`);
  await page.locator("#reg-passphrase2").fill(`passphrase of ${username}`);
  await page.getByLabel("Key size").selectOption(bits);
  await page.getByRole("button", { name: "Create account" }).click();
  await connected(page);
}

export async function connected(page) {
  await page.locator("#connection[data-state=online]").waitFor({ timeout: WAIT_MS });
}

export async function openConversation(page, name) {
  // A reload opens the conversation that was open (at phone width the
  // list is then hidden): nothing to click if it is this one.
  const title = page.locator("#room-title");
  if (await title.isVisible() && /^[#@]/.test(await title.textContent()) && (await title.textContent()).slice(1) === name) return;
  await page.locator(".room-button", { has: page.locator(".room-name", { hasText: new RegExp(`^${name}$`) }) }).click();
  await page.locator("#room-title").filter({ hasText: name }).waitFor();
}

/**
 * Accepts the message request from `from` (a DM opened by someone this
 * user shares no room with, §21) and waits for the conversation to open.
 */
export async function acceptRequest(page, from) {
  const request = page.locator("#request-list li", { hasText: `${from} wants to message you` });
  await request.getByRole("button", { name: "Accept" }).click({ timeout: WAIT_MS });
  await page.locator("#room-title").filter({ hasText: `@${from}` }).waitFor({ timeout: WAIT_MS });
}

export async function sendText(page, text) {
  await page.getByLabel("Message", { exact: true }).fill(text);
  await page.getByLabel("Message", { exact: true }).press("Enter");
}

/** Creates a group room in the page and invites `invitees`; each of `joiners` (pages) joins it. */
export async function roomWith(page, name, joiners = {}) {
  await page.getByLabel("New room").fill(name);
  await page.getByRole("button", { name: "Create", exact: true }).click();
  await page.locator("#room-title").filter({ hasText: name }).waitFor();
  for (const [user, joiner] of Object.entries(joiners)) {
    await page.getByLabel("Invite someone").fill(user);
    await page.getByRole("button", { name: "Invite", exact: true }).click();
    if (!joiner) continue;
    await joiner.getByRole("button", { name: `Join ${name}` }).click();
    await joiner.locator("#room-title").filter({ hasText: name }).waitFor();
    await page.locator("#timeline .event", { hasText: `${user} joined` }).waitFor();
  }
}

/** Counts the page's WebSocket connections, `send` frames and the `rate_limited` errors they get. */
export function watchSockets(page) {
  const seen = { sockets: 0, sends: 0, rateLimited: 0, held: 0 };
  page.on("websocket", (ws) => {
    seen.sockets += 1;
    ws.on("framesent", (f) => {
      if (String(f.payload).includes('"type":"send"')) seen.sends += 1;
    });
    ws.on("framereceived", (f) => {
      const frame = JSON.parse(String(f.payload));
      if (frame.type === "error" && frame.code === "rate_limited") {
        seen.rateLimited += 1;
        if (/held behind/.test(frame.message)) seen.held += 1;
      }
    });
  });
  return seen;
}

/** The texts of the messages the page shows from the log, in order. */
export const shownTexts = (page) => page.locator("#timeline li.msg:not(.pending) .text").allTextContents();

/** The timeline item (rendered from the log, not a pending one) holding `text`. */
export const message = (page, text) => page.locator("#timeline li.msg:not(.pending)", { hasText: text });

export async function screenshot(page, name) {
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`) });
}

export const fixturePem = (name) => readFileSync(join(ROOT, "tests", "fixtures", "keys", `${name}.pem`), "utf8");
export const vector = (name) => JSON.parse(readFileSync(join(ROOT, "tests", "vectors", `${name}.json`), "utf8"));
export const removeDir = (dir) => rmSync(dir, { recursive: true, force: true });

/** Every request of `page` went to `server`'s origin (or stayed in the page: blob:, data:). */
export function foreignRequests(page, server) {
  return page.requests.filter((u) => !u.startsWith(server.url + "/") && !u.startsWith("blob:") && !u.startsWith("data:"));
}
