// Read receipts and typing between two live pages (PROTOCOL.md §21):
// "seen by" and "is typing…" arrive as signals, never as log entries, and
// a user who turns read receipts off is not listed; the setting survives a
// reload. At phone width the message actions are on screen.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import {
  launchBrowser, openConversation, openPage, registerInPage, roomWith, screenshot, sendText, ownServer,
} from "./harness.mjs";

const WAIT = { timeout: 20_000 };

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

const message = (page, text) => page.locator("#timeline li.msg:not(.pending)", {
  has: page.locator(":scope > .body > .text", { hasText: new RegExp(`^${text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`) }),
});

/** How many rows the server's log holds (read with the sqlite3 command). */
function entryCount(server) {
  const r = spawnSync("sqlite3", [server.db, "SELECT count(*) FROM entries"], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  return Number(r.stdout.trim());
}

/** The `signal` frames the page sent. */
function watchSignals(page) {
  const frames = [];
  page.on("websocket", (ws) => ws.on("framesent", (f) => {
    const frame = JSON.parse(String(f.payload));
    if (frame.type === "signal") frames.push(frame);
  }));
  return frames;
}

const inDatabase = (server, needle) => [server.db, `${server.db}-wal`].some((f) => existsSync(f) && readFileSync(f).includes(needle));

test("typing and read receipts go live between two pages and never into the log", async (t) => {
  const server = await ownServer(t);
  const eve = await openPage(browser, server);
  const fay = await openPage(browser, server);
  const faySignals = watchSignals(fay);
  await registerInPage(eve, "eve");
  await registerInPage(fay, "fay");
  await roomWith(eve, "desk", { fay });
  // Both have a sender key before the signals start (the first signal of a device without one distributes it first).
  await sendText(fay, "morning");
  await message(eve, "morning").waitFor(WAIT);
  await sendText(eve, "Did you see the report?");
  await message(fay, "Did you see the report?").waitFor(WAIT);

  // fay has the conversation open in a visible tab: eve sees "seen by fay" under her message.
  await message(eve, "Did you see the report?").locator(".seen-by", { hasText: "seen by fay" }).waitFor(WAIT);
  assert.equal(await eve.locator(".seen-by").count(), 1, "one 'seen by' line, under the newest message fay read");

  // Typing: eve sees it while fay types, and it ends when fay sends.
  await new Promise((r) => setTimeout(r, 1500)); // the receipts above have been stored (or not) by now
  const before = entryCount(server);
  await fay.getByLabel("Message", { exact: true }).pressSequentially("Yes, rea");
  await eve.locator("#typing", { hasText: "fay is typing…" }).waitFor(WAIT);
  assert.equal(await fay.locator("#typing").textContent(), "", "nobody else is typing for fay");
  assert.equal(entryCount(server), before, "typing and receipts add nothing to the log");
  await fay.getByLabel("Message", { exact: true }).pressSequentially("ding it now");
  await fay.getByLabel("Message", { exact: true }).press("Enter");
  await message(eve, "Yes, reading it now").waitFor(WAIT);
  await eve.locator("#typing").filter({ hasText: /^$/ }).waitFor(WAIT);

  const kinds = new Set(faySignals.map((f) => f.kind));
  assert.ok(kinds.has("typing") && kinds.has("receipt"), `fay sent ${[...kinds]}`);
  for (const f of faySignals) assert.equal(inDatabase(server, Buffer.from(f.body, "base64").subarray(0, 120)), false, "a signal body is never stored");
  assert.deepEqual([...eve.errors, ...fay.errors], []);
});

test("with read receipts turned off, others no longer see 'seen by'; the choice survives a reload", async (t) => {
  const server = await ownServer(t);
  const gil = await openPage(browser, server);
  const hoa = await openPage(browser, server);
  await registerInPage(gil, "gil");
  await registerInPage(hoa, "hoa");
  await roomWith(gil, "quiet", { hoa });
  await sendText(hoa, "hello");
  await message(gil, "hello").waitFor(WAIT);
  await sendText(gil, "first");
  await message(gil, "first").locator(".seen-by", { hasText: "seen by hoa" }).waitFor(WAIT);

  if (await hoa.locator("#menu-button").isVisible()) await hoa.locator("#menu-button").click();
  await hoa.getByLabel("Send read receipts").uncheck();
  await hoa.getByLabel("Show when I am typing").uncheck();
  await sendText(gil, "second");
  await message(hoa, "second").waitFor(WAIT);
  await hoa.getByLabel("Message", { exact: true }).pressSequentially("typing unseen");
  // Receipts go at most once a second: give hoa's page three.
  await new Promise((r) => setTimeout(r, 3000));
  assert.equal(await message(gil, "second").locator(".seen-by").count(), 0, "hoa's reading is not shown");
  assert.equal(await message(gil, "first").locator(".seen-by").count(), 1);
  assert.equal(await gil.locator("#typing").textContent(), "", "hoa's typing is not shown");

  await hoa.reload();
  await openConversation(hoa, "quiet");
  assert.equal(await hoa.getByLabel("Send read receipts").isChecked(), false);
  assert.equal(await hoa.getByLabel("Show when I am typing").isChecked(), false);
  assert.deepEqual([...gil.errors, ...hoa.errors], []);
});

test("at phone width the message actions are on screen and reachable", async (t) => {
  const server = await ownServer(t);
  const ivy = await openPage(browser, server, { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const jon = await openPage(browser, server);
  await registerInPage(ivy, "ivy");
  await registerInPage(jon, "jon");
  await roomWith(jon, "phone", { ivy });
  await sendText(jon, "Can you read this on a phone?");
  const msg = message(ivy, "Can you read this on a phone?");
  await msg.waitFor(WAIT);
  await msg.getByRole("button", { name: "React" }).click();
  await ivy.getByRole("button", { name: "React ❤️" }).click();
  await msg.getByRole("button", { name: "❤️ by ivy" }).waitFor(WAIT);
  await msg.getByRole("button", { name: "Reply" }).click();
  await sendText(ivy, "Yes, fine");
  await message(ivy, "Yes, fine").waitFor(WAIT);
  for (const name of ["Reply", "React"]) {
    const button = msg.getByRole("button", { name, exact: true });
    assert.ok(await button.isVisible(), `${name} is visible`);
    const box = await button.boundingBox();
    assert.ok(box.x >= 0 && box.x + box.width <= 390, `${name} fits the width (${box.x}+${box.width})`);
    assert.equal(await button.evaluate((b) => getComputedStyle(b.parentElement).opacity), "1", `${name} is not faded on a phone`);
  }
  const own = message(ivy, "Yes, fine");
  for (const name of ["Edit", "Delete"]) assert.ok(await own.getByRole("button", { name, exact: true }).isVisible());
  await screenshot(ivy, "21-phone-message-actions");
  assert.deepEqual([...ivy.errors, ...jon.errors], []);
});
