// The page on a 100,000-message room (issue 15). Not a test: it prints
// figures for docs/PERFORMANCE.md.
//
//   node bench/page.mjs                    # target/release/hush if built, else target/debug/hush
//   HUSH_BIN=target/debug/hush MESSAGES=20000 node bench/page.mjs
//
// Starts `hush serve` (rate limits raised, durability normal) on a fresh
// database, signs up two users in Chromium pages ("sam" and "rea"), and
// seeds a room with MESSAGES real envelopes sealed by sam's page key with
// the page's own crypto module (one sender key, every body RSA-PSS signed),
// several hundred in flight. Then rea's page opens the room with an empty
// store (first load), reloads (timed: newest message visible), and reads
// while sam sends 100 messages a second. Long main-thread tasks come from
// PerformanceObserver("longtask"); the JS heap from CDP Runtime.getHeapUsage.

import { existsSync } from "node:fs";
import { join } from "node:path";
import { ROOT, connected, launchBrowser, openPage, openPageIn, registerInPage, removeDir, roomWith, startServer, tempDir } from "../tests/browser/harness.mjs";

const MESSAGES = Number(process.env.MESSAGES ?? 100_000);
const STREAM_SECONDS = Number(process.env.STREAM_SECONDS ?? 10);
const RATE = 100; // messages a second while streaming
if (!process.env.HUSH_BIN && existsSync(join(ROOT, "target", "release", "hush"))) process.env.HUSH_BIN = join(ROOT, "target", "release", "hush");

const TEXT_TAIL = " of the big room: the quick brown fox jumps over the lazy dog";
const textOf = (i) => `message ${i}${TEXT_TAIL}`;

/** Watches long tasks from the first script of every page of the context. */
const observeLongTasks = () => {
  window.__longtasks = [];
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) window.__longtasks.push({ start: e.startTime, duration: e.duration });
  }).observe({ type: "longtask", buffered: true });
};

/**
 * In sam's page: a new device and sender key for `room`, its distribution
 * to sam and rea, then `count` messages from `from` on, sealed and sent on
 * a WebSocket of its own with up to `window` in flight, at most `perSecond`
 * a second if given. Resolves with {sent, ms}.
 */
async function seed(page, { room, from, count, perSecond = 0 }) {
  return page.evaluate(async ({ room, from, count, perSecond, tail }) => {
    const texts = (i) => `message ${i}${tail}`;
    const c = await import("/js/crypto.js");
    const b = await import("/js/bytes.js");
    const db = await new Promise((resolve, reject) => {
      const r = indexedDB.open("hush");
      r.onsuccess = () => resolve(r.result);
      r.onerror = () => reject(r.error);
    });
    const kv = (key) => new Promise((resolve) => {
      const r = db.transaction("kv").objectStore("kv").get(key);
      r.onsuccess = () => resolve(r.result);
    });
    const session = await kv("session");
    const record = await kv("identity:sam");
    const identity = await c.restoredIdentity(record.current.spki, record.current.signKey, record.current.unwrapKey);
    const keysOf = async (user) => {
      const k = await (await fetch(`/api/v1/users/${user}/keys`, { headers: { Authorization: `Bearer ${session.token}` } })).json();
      return c.publicIdentity(b.b64decode(k.current.public_key));
    };
    window.__chain ??= {};
    let state = window.__chain[room];
    const bodies = [];
    if (!state) {
      const device = c.newDeviceId();
      const key = await c.senderKey(1, c.randomBytes(32));
      const rea = await keysOf("rea");
      bodies.push(await c.sealDistribution(room, "sam", device, key,
        [{ username: "sam", identity: identity.public }, { username: "rea", identity: rea }], identity));
      state = window.__chain[room] = { device, key, counter: 0n };
    }
    const ws = new WebSocket(`${location.origin.replace(/^http/, "ws")}/ws`);
    const waiting = new Map();
    let refused = 0;
    ws.onmessage = (event) => {
      const f = JSON.parse(event.data);
      if (f.type === "ack" || f.type === "error") {
        const id = f.type === "ack" ? f.client_id : f.id;
        if (f.type === "error") refused += 1;
        waiting.get(id)?.();
        waiting.delete(id);
      }
    };
    await new Promise((resolve) => (ws.onopen = resolve));
    const ready = new Promise((resolve) => {
      const old = ws.onmessage;
      ws.onmessage = (event) => {
        if (JSON.parse(event.data).type === "ready") {
          ws.onmessage = old;
          resolve();
        }
      };
    });
    ws.send(JSON.stringify({ v: 1, type: "auth", token: session.token }));
    await ready;
    let n = 0;
    const send = (body) => {
      const id = `seed-${room}-${Date.now()}-${n++}-${Math.random()}`;
      const acked = new Promise((resolve) => waiting.set(id, resolve));
      ws.send(JSON.stringify({ v: 1, type: "send", id, room, client_id: id, body: b.b64encode(body) }));
      return acked;
    };
    const started = performance.now();
    for (const body of bodies) await send(body);
    const BATCH = perSecond ? perSecond / 10 : 400;
    for (let i = 0; i < count; i += BATCH) {
      const tick = performance.now();
      const sealed = await Promise.all(Array.from({ length: Math.min(BATCH, count - i) }, (_, j) => {
        const counter = state.counter;
        state.counter += 1n;
        return c.sealEnvelope(room, "sam", state.device, state.key, counter, c.textPayload(texts(from + i + j)), identity)
          .then((body) => ({ body, j }));
      }));
      // Sealed in parallel; sent in counter order.
      sealed.sort((x, y) => x.j - y.j);
      await Promise.all(sealed.map(({ body }) => send(body)));
      if (perSecond) await new Promise((resolve) => setTimeout(resolve, Math.max(0, 100 - (performance.now() - tick))));
    }
    ws.close();
    return { sent: count, refused, ms: Math.round(performance.now() - started) };
  }, { room, from, count, perSecond, tail: TEXT_TAIL });
}

async function main() {
  const dir = tempDir("bench-page");
  const rate = "1000000/s:1000000";
  const server = await startServer(dir, 0, ["--durability", "normal", "--message-rate", rate, "--user-message-rate", rate, "--frame-rate", rate]);
  const browser = await launchBrowser();
  try {
    const samPage = await openPage(browser, server);
    const reaPage = await openPage(browser, server);
    await registerInPage(samPage, "sam", { bits: "2048" });
    await registerInPage(reaPage, "rea", { bits: "2048" });
    await roomWith(samPage, "big", { rea: reaPage });
    const reaContext = reaPage.context();
    await reaPage.close(); // rea is away while the room fills
    // sam seals from a plain document of the origin (its IndexedDB, no chat
    // client), so sam's own page does not read the room as it fills.
    await samPage.goto(`${server.url}/icon.svg`);

    const room = 1;
    console.log(`seeding ${MESSAGES} messages…`);
    const seeded = await seed(samPage, { room, from: 1, count: MESSAGES });
    console.log(`seeded ${seeded.sent} messages in ${(seeded.ms / 1000).toFixed(1)} s (${Math.round(seeded.sent / (seeded.ms / 1000))}/s), ${seeded.refused} refused`);

    // First load: an empty store, the whole room synced into it.
    await reaContext.addInitScript(observeLongTasks);
    let rea = await openPageIn(reaContext, server);
    const cdp = await reaContext.newCDPSession(rea);
    rea.on("console", (m) => m.type() === "error" && console.log(`page: ${m.text()}`));
    const firstStart = Date.now();
    await connected(rea);
    await rea.locator(".room-button").first().click();
    const newest = (page) => page.locator("#timeline li.msg .text", { hasText: new RegExp(`^${textOf(MESSAGES)}$`) });
    const progress = setInterval(async () => {
      const last = await rea.locator("#timeline li.msg .text").last().textContent({ timeout: 1000 }).catch(() => "none");
      const problem = await rea.locator("#problem").textContent({ timeout: 1000 }).catch(() => "");
      if (process.env.BENCH_DEBUG) console.log(await rea.evaluate(() => {
        const items = [...document.querySelectorAll("#timeline li[data-seq]")];
        const t = document.querySelector("#timeline");
        return JSON.stringify({ n: items.length, first: items[0]?.dataset.seq, last: items.at(-1)?.dataset.seq, top: t.scrollTop, h: t.scrollHeight, ch: t.clientHeight, conn: document.querySelector("#connection").textContent });
      }));
      console.log(`  first load, ${Math.round((Date.now() - firstStart) / 1000)} s: last shown "${last.slice(0, 14)}…" ${problem}`);
    }, 10_000);
    await newest(rea).waitFor({ timeout: 30 * 60_000 });
    clearInterval(progress);
    const firstMs = Date.now() - firstStart;
    await rea.waitForFunction(() => document.querySelector("#connection").textContent === "Connected", null, { timeout: 60_000 });
    const firstTasks = await rea.evaluate(() => window.__longtasks);
    const heapOf = async () => {
      const before = (await cdp.send("Runtime.getHeapUsage")).usedSize / 1048576;
      await cdp.send("HeapProfiler.collectGarbage");
      return { heapMiB: before, heapAfterGcMiB: (await cdp.send("Runtime.getHeapUsage")).usedSize / 1048576 };
    };
    const firstHeap = await heapOf();
    console.log(`first load: JS heap ${firstHeap.heapMiB.toFixed(1)} MiB (${firstHeap.heapAfterGcMiB.toFixed(1)} MiB after a GC)`);
    if (process.env.BENCH_DEBUG) console.log(JSON.stringify(firstTasks.map((t) => [Math.round(t.start), Math.round(t.duration)])));
    console.log(`first load (empty store): newest message after ${(firstMs / 1000).toFixed(1)} s; `
      + `longest task ${Math.round(Math.max(0, ...firstTasks.map((t) => t.duration)))} ms, ${firstTasks.filter((t) => t.duration > 200).length} over 200 ms`);

    // Reload: from the store, then a sync of nothing new.
    const reloads = [];
    for (let i = 0; i < 3; i++) {
      await rea.reload();
      const at = await rea.waitForFunction((text) => {
        const last = [...document.querySelectorAll("#timeline li.msg .text")].at(-1);
        return last?.textContent === text ? performance.now() : null;
      }, textOf(MESSAGES), { polling: "raf", timeout: 60_000 });
      const visibleMs = await at.jsonValue();
      await connected(rea);
      await rea.waitForTimeout(2000);
      const tasks = await rea.evaluate(() => window.__longtasks);
      const heap = await heapOf();
      const nodes = await rea.evaluate(() => document.getElementsByTagName("*").length);
      reloads.push({ visibleMs, longest: Math.max(0, ...tasks.map((t) => t.duration)), ...heap, nodes });
      console.log(`reload ${i + 1}: newest message visible ${Math.round(visibleMs)} ms after navigation start; `
        + `longest task ${Math.round(reloads.at(-1).longest)} ms; JS heap ${heap.heapMiB.toFixed(1)} MiB `
        + `(${heap.heapAfterGcMiB.toFixed(1)} after a GC); ${nodes} elements`);
    }

    // Streaming: sam sends 100 messages a second while rea reads.
    await rea.evaluate(() => (window.__longtasks = []));
    const streamed = await seed(samPage, { room, from: MESSAGES + 1, count: RATE * STREAM_SECONDS, perSecond: RATE });
    await newest(rea).first().waitFor().catch(() => {});
    const last = MESSAGES + RATE * STREAM_SECONDS;
    await rea.locator("#timeline li.msg .text", { hasText: new RegExp(`^${textOf(last)}$`) }).waitFor({ timeout: 60_000 });
    const streamTasks = await rea.evaluate(() => window.__longtasks);
    const heap = await heapOf();
    console.log(`stream: ${streamed.sent} messages in ${(streamed.ms / 1000).toFixed(1)} s; longest task ${Math.round(Math.max(0, ...streamTasks.map((t) => t.duration)))} ms, `
      + `${streamTasks.filter((t) => t.duration > 200).length} over 200 ms; JS heap after ${heap.heapMiB.toFixed(1)} MiB (${heap.heapAfterGcMiB.toFixed(1)} after a GC)`);
    console.log(JSON.stringify({ messages: MESSAGES, seededPerSecond: Math.round(seeded.sent / (seeded.ms / 1000)), firstLoadMs: firstMs, firstHeap, reloads, streamHeap: heap, stream: {
      longestTaskMs: Math.max(0, ...streamTasks.map((t) => t.duration)), over200: streamTasks.filter((t) => t.duration > 200).length,
    } }));
  } finally {
    await browser.close();
    await server.stop();
    removeDir(dir);
  }
}

await main();
