// The page's own crypto module (web/js/crypto.js, as served by `hush
// serve`) runs every case of tests/vectors/ inside Chromium; plus what the
// server sends with the page: content types, security headers, 404s.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT, fixturePem, launchBrowser, openPage, ownServer, vector } from "./harness.mjs";
import { runVectorChecks } from "./vector-checks.mjs";

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

test("every test vector passes through the page's crypto module in Chromium", async (t) => {
  const server = await ownServer(t);
  const page = await openPage(browser, server);
  const vectors = Object.fromEntries(["fingerprint", "safety_number", "envelope", "envelope_v1", "sender_key", "sender_key_v1", "payload"].map((n) => [n, vector(n)]));
  // §21's vectors, once the Rust side has written them.
  for (const n of ["signal", "timer"]) if (existsSync(join(ROOT, "tests", "vectors", `${n}.json`))) vectors[n] = vector(n);
  const pems = Object.fromEntries(["alice", "bob", "carol", "dave", "mallory"].map((n) => [n, fixturePem(n)]));
  // An expression string, so nothing in the page needs eval (the CSP forbids it).
  const args = [`${server.url}/js/crypto.js`, vectors, pems].map((a) => JSON.stringify(a)).join(", ");
  const results = await page.evaluate(`(${runVectorChecks.toString()})(${args})`);
  const failed = results.filter((r) => !r.ok);
  assert.deepEqual(failed, [], "failed vector checks");
  const cases = [vectors.envelope, vectors.envelope_v1].reduce((n, e) => n + e.accept.length + e.reorder.length + e.reject.length, 0)
    + vectors.sender_key.reject.length + vectors.sender_key_v1.reject.length + vectors.payload.cases.length
    + vectors.fingerprint.cases.length + vectors.safety_number.cases.length;
  assert.ok(results.length >= cases, `${results.length} checks for ${cases} vector cases`);
  if (vectors.signal) {
    const signalCases = vectors.signal.accept.length + vectors.signal.reject.length;
    assert.ok(results.filter((r) => r.name.startsWith("signal")).length >= signalCases, "every signal vector was checked");
  }
  if (vectors.timer) {
    const timerCases = vectors.timer.valid.length + vectors.timer.rejected.length;
    assert.ok(results.filter((r) => r.name.startsWith("timer ")).length >= timerCases, "every timer vector was checked");
  }
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test("the page's key file round trip: sealed in Chromium, opened with the passphrase only", async (t) => {
  const server = await ownServer(t);
  const page = await openPage(browser, server);
  const outcome = await page.evaluate(async () => {
    const c = await import("/js/crypto.js");
    const pair = await c.generateKeyPair(2048);
    const file = await c.sealKeyFile(pair.pkcs8, pair.spki, "correct horse");
    const opened = await c.openKeyFile(JSON.parse(JSON.stringify(file)), "correct horse");
    let wrong = "opened";
    try {
      await c.openKeyFile(file, "wrong horse");
    } catch (e) {
      wrong = e.message;
    }
    return {
      fingerprint: file.fingerprint === opened.public.fpHex,
      extractable: opened.signKey.extractable || opened.unwrapKey.extractable,
      wrong,
      kdf: file.kdf,
    };
  });
  assert.equal(outcome.fingerprint, true);
  assert.equal(outcome.extractable, false, "private keys are non-extractable");
  assert.match(outcome.wrong, /wrong passphrase/);
  assert.deepEqual({ ...outcome.kdf, salt: undefined }, { name: "argon2id", version: 19, memory_kib: 19456, iterations: 2, parallelism: 1, salt: undefined });
  await page.context().close();
});

test("the page is served with its content types and a strict security policy; unknown paths are 404", async (t) => {
  const server = await ownServer(t);
  const index = await fetch(`${server.url}/`);
  assert.equal(index.status, 200);
  assert.equal(index.headers.get("content-type"), "text/html; charset=utf-8");
  const csp = index.headers.get("content-security-policy");
  assert.match(csp, /default-src 'self'/);
  assert.match(csp, /script-src 'self' 'wasm-unsafe-eval';/);
  assert.match(csp, new RegExp(`connect-src 'self' ws://127\\.0\\.0\\.1:${server.port} wss://127\\.0\\.0\\.1:${server.port};`));
  assert.doesNotMatch(csp, /unsafe-inline|https?:/);
  assert.equal(index.headers.get("x-content-type-options"), "nosniff");
  assert.equal(index.headers.get("referrer-policy"), "no-referrer");
  assert.doesNotMatch(await index.text(), /<script>|<script(?![^>]*src=)[^>]*>[^<]/, "no inline script");

  const js = await fetch(`${server.url}/js/crypto.js`);
  assert.equal(js.headers.get("content-type"), "text/javascript; charset=utf-8");
  const css = await fetch(`${server.url}/app.css`);
  assert.equal(css.headers.get("content-type"), "text/css; charset=utf-8");

  for (const path of ["/nope", "/js/nope.js", "/../Cargo.toml", "/web/index.html"]) {
    const r = await fetch(`${server.url}${path}`);
    assert.equal(r.status, 404, path);
    assert.equal((await r.json()).error.code, "not_found");
  }
  assert.equal((await fetch(`${server.url}/`, { method: "POST" })).status, 404);
  assert.equal((await fetch(`${server.url}/healthz`)).status, 200);
});

test("the vendored Argon2id is the pinned npm package's built file", () => {
  const vendored = readFileSync(join(ROOT, "web", "vendor", "hash-wasm", "argon2.umd.min.js"));
  const pinned = readFileSync(join(ROOT, "node_modules", "hash-wasm", "dist", "argon2.umd.min.js"));
  assert.ok(vendored.equals(pinned), "web/vendor/hash-wasm/argon2.umd.min.js matches node_modules/hash-wasm");
  const lock = JSON.parse(readFileSync(join(ROOT, "package-lock.json"), "utf8"));
  const version = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).devDependencies["hash-wasm"];
  assert.equal(lock.packages["node_modules/hash-wasm"].version, version);
});
