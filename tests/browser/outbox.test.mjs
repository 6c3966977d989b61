// Issue 14: text waiting to send survives a reload, a closed tab, and a tab
// closed while another tab of the same user stays open. Every message goes
// into the browser's outbox before it is sent; the next page (or the other
// tab) sends what is left, in order, under the same client ids, so each is
// stored exactly once.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import {
  connected, launchBrowser, message, openConversation, openPage, openPageIn, ownServer, registerInPage, roomWith, screenshot,
  sendText, shownTexts,
} from "./harness.mjs";
import { RawUser, bodyKindOf } from "./raw.mjs";

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

/** How many messages the page still waits to send, from the status line (0 if none). */
async function waiting(page) {
  const found = (await page.locator("#connection").textContent()).match(/(\d+) waiting to send/);
  return found ? Number(found[1]) : 0;
}

/** The message envelopes (not key distributions) in `room`'s log, read over a raw connection as `user`. */
async function storedMessages(server, page, user, room) {
  const raw = await RawUser.login(server, user);
  return (await raw.log(page, room)).filter((e) => e.kind === "message" && bodyKindOf(e) === 1);
}

test("messages waiting to send survive a reload and a closed tab, and are stored once each, in order", async (t) => {
  // One send a second, no burst: typing outruns sending.
  const server = await ownServer(t, undefined, undefined, ["--message-rate", "1/s:1"]);
  const context = (await openPage(browser, server)).context();
  let gil = context.pages()[0];
  const hal = await openPage(browser, server);
  await registerInPage(gil, "gil");
  await registerInPage(hal, "hal");
  await roomWith(gil, "slow", { hal });

  const first = Array.from({ length: 5 }, (_, i) => `before the reload ${i + 1}`);
  for (const text of first) await sendText(gil, text);
  await gil.locator("#timeline li.pending[data-saved]", { hasText: first.at(-1) }).waitFor();
  assert.ok(await waiting(gil) >= 3, `still waiting before the reload (${await waiting(gil)})`);
  await gil.reload();
  await connected(gil);
  await openConversation(gil, "slow");
  // What was typed shows as pending at once, from the outbox.
  await gil.locator("#timeline li.pending", { hasText: first.at(-1) }).waitFor();
  await screenshot(gil, "14-pending-after-reload");

  const second = Array.from({ length: 4 }, (_, i) => `before closing the tab ${i + 1}`);
  for (const text of second) await sendText(gil, text);
  await gil.locator("#timeline li.pending[data-saved]", { hasText: second.at(-1) }).waitFor();
  assert.ok(await waiting(gil) >= 3, `still waiting before the tab closes (${await waiting(gil)})`);
  await gil.close();
  gil = await openPageIn(context, server);
  await connected(gil);

  const all = [...first, ...second];
  await message(hal, all.at(-1)).waitFor({ timeout: 60_000 });
  await gil.locator("#connection", { hasText: /^Connected$/ }).waitFor({ timeout: 30_000 });
  assert.deepEqual(await shownTexts(hal), all, "the reader sees each message once, in typing order");
  assert.equal(await hal.locator("#timeline li.rejected").count(), 0);
  const stored = await storedMessages(server, hal, "hal", 1);
  assert.equal(stored.length, all.length, "the server stored each message once");
  assert.equal(new Set(stored.map((e) => e.client_id)).size, all.length);
  await openConversation(gil, "slow");
  assert.deepEqual(await shownTexts(gil), all);
  assert.deepEqual(await gil.evaluate(() => new Promise((resolve) => {
    const request = indexedDB.open("hush");
    request.onsuccess = () => {
      const all = request.result.transaction("outbox").objectStore("outbox").getAll();
      all.onsuccess = () => resolve(all.result);
    };
  })), [], "the outbox is empty");
  assert.deepEqual([...gil.errors, ...hal.errors].filter((e) => !/WebSocket/.test(e)), []);
  await context.close();
  await hal.context().close();
});

test("a tab closed with messages unsent leaves them to another open tab of the same user", async (t) => {
  const server = await ownServer(t, undefined, undefined, ["--message-rate", "1/s:1"]);
  const ivy = await openPage(browser, server);
  const jon = await openPage(browser, server);
  await registerInPage(ivy, "ivy");
  await registerInPage(jon, "jon");
  await roomWith(ivy, "relay", { jon });
  const other = await openPageIn(ivy.context(), server);
  await connected(other);

  const texts = Array.from({ length: 4 }, (_, i) => `left behind ${i + 1}`);
  for (const text of texts) await sendText(ivy, text);
  // Saved in the browser (a few milliseconds after Enter), not yet sent.
  await ivy.locator("#timeline li.pending[data-saved]", { hasText: texts.at(-1) }).waitFor();
  assert.ok(await waiting(ivy) >= 2, "still waiting when the tab closes");
  await ivy.close();
  await message(jon, texts.at(-1)).waitFor({ timeout: 60_000 });
  assert.deepEqual(await shownTexts(jon), texts);
  assert.equal(await jon.locator("#timeline li.rejected").count(), 0);
  const stored = await storedMessages(server, jon, "jon", 1);
  assert.equal(stored.length, texts.length, "each message stored once");
  assert.deepEqual([...other.errors, ...jon.errors].filter((e) => !/WebSocket/.test(e)), []);
  await other.context().close();
  await jon.context().close();
});
