// Message requests, blocking, declined invitations, room admins and
// disappearing messages in the page (PROTOCOL.md §21), against the real
// server: nothing of a request is shown until it is accepted; a block makes
// the server refuse the blocked user's direct messages; the creator makes
// an admin who removes a member; an expired message leaves the page and
// the browser's store.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  hush, launchBrowser, openConversation, openPage, registerInPage, removeDir, roomWith, screenshot, sendText, ownServer, tempDir,
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

async function openDm(page, user) {
  await page.getByLabel("Direct message").fill(user);
  await page.getByRole("button", { name: "Open" }).click();
  await page.locator("#room-title").filter({ hasText: `@${user}` }).waitFor(WAIT);
}

/** Every message item this user's browser store holds for any room (decrypted in the page). */
const storedTexts = (page, user) => page.evaluate(async (name) => {
  const { Store } = await import("/js/store.js");
  const store = await Store.open(name);
  const records = await new Promise((resolve, reject) => {
    const request = store.db.transaction("messages").objectStore("messages").getAll();
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  const items = await Promise.all(records.map((r) => store.openItem(r)));
  store.close();
  return items.filter((i) => i?.payload?.t === "text").map((i) => i.payload.text);
}, user);

test("a DM request shows nothing until accepted; decline and block end it, and the server refuses the blocked user", async (t) => {
  const server = await ownServer(t);
  const kim = await openPage(browser, server);
  const lea = await openPage(browser, server);
  const max = await openPage(browser, server);
  await registerInPage(kim, "kim");
  await registerInPage(lea, "lea");
  await registerInPage(max, "max");

  // lea asks kim; kim sees only who asks.
  await openDm(lea, "kim");
  await sendText(lea, "Are you the kim from the climbing club?");
  await kim.locator("#request-list li", { hasText: "lea wants to message you" }).waitFor(WAIT);
  assert.equal(await kim.locator(".room-button").count(), 0, "a request is not a conversation yet");
  assert.equal(await kim.locator("#timeline li.msg").count(), 0);
  assert.deepEqual(await storedTexts(kim, "kim"), [], "nothing of the request was decrypted and stored");
  await screenshot(kim, "21-message-request");
  await kim.locator("#request-list li", { hasText: "lea" }).getByRole("button", { name: "Accept" }).click();
  await message(kim, "Are you the kim from the climbing club?").waitFor(WAIT);
  await sendText(kim, "I am");
  await message(lea, "I am").waitFor(WAIT);

  // max asks kim; kim blocks him from the request.
  await openDm(max, "kim");
  await sendText(max, "buy cheap watches");
  const request = kim.locator("#request-list li", { hasText: "max wants to message you" });
  await request.waitFor(WAIT);
  await request.getByRole("button", { name: "Block" }).click();
  await request.waitFor({ state: "detached", ...WAIT });
  // The server now refuses max's messages to kim.
  await sendText(max, "are you there?");
  await max.locator("#timeline li.pending.failed", { hasText: "are you there?" }).waitFor(WAIT);
  // max's own session (the page's token) asking for the DM again: 403 blocked.
  const dm = await max.evaluate(async () => {
    const idb = await import("/js/idb.js");
    const session = await idb.get("session");
    const r = await fetch("/api/v1/dm", {
      method: "POST", headers: { Authorization: `Bearer ${session.token}`, "Content-Type": "application/json" }, body: JSON.stringify({ username: "kim" }),
    });
    return { status: r.status, body: await r.json().catch(() => null) };
  });
  assert.equal(dm.status, 403, JSON.stringify(dm));
  assert.equal(dm.body?.error?.code, "blocked");
  // kim's blocked list has max, with Unblock.
  if (await kim.locator("#menu-button").isVisible()) await kim.locator("#menu-button").click();
  await kim.getByRole("button", { name: "Blocked users" }).click();
  await kim.locator("#blocked-list li", { hasText: "max" }).getByRole("button", { name: "Unblock max" }).waitFor(WAIT);
  await kim.locator("#blocked-dialog").getByRole("button", { name: "Close" }).click();

  // A group invitation can be declined; the room's members see it.
  await roomWith(lea, "crag", { kim: null });
  await kim.getByRole("button", { name: "Decline crag" }).click();
  await lea.locator("#timeline .event", { hasText: "kim declined the invitation" }).waitFor(WAIT);
  assert.equal(await kim.getByRole("button", { name: "Join crag" }).count(), 0);
  assert.deepEqual(kim.errors, []);
});

test("the creator makes an admin, who removes a member", async (t) => {
  const server = await ownServer(t);
  const ned = await openPage(browser, server);
  const ola = await openPage(browser, server);
  const pam = await openPage(browser, server);
  await registerInPage(ned, "ned");
  await registerInPage(ola, "ola");
  await registerInPage(pam, "pam");
  await roomWith(ned, "board", { ola, pam });
  await ned.getByRole("button", { name: "Members" }).click();
  await ned.getByRole("button", { name: "Make ola admin" }).click();
  await ned.locator("#members-body li[data-user=ola]", { hasText: "(admin)" }).waitFor(WAIT);
  await ned.locator("#members-dialog").getByRole("button", { name: "Close" }).click();
  await ola.locator("#timeline .event", { hasText: "ned made ola an admin" }).waitFor(WAIT);

  await ola.getByRole("button", { name: "Members" }).click();
  assert.equal(await ola.getByRole("button", { name: "Remove ned" }).count(), 0, "an admin cannot remove the creator");
  assert.equal(await ola.getByRole("button", { name: /admin/ }).count(), 0, "only the creator makes admins");
  await ola.getByRole("button", { name: "Remove pam" }).click();
  await ned.locator("#timeline .event", { hasText: "ola removed pam" }).waitFor(WAIT);
  await ola.locator("#members-body li[data-user=pam]").waitFor({ state: "detached", ...WAIT });
  assert.deepEqual([...ned.errors, ...ola.errors], []);
});

test("a disappearing message leaves the page and the browser's store", async (t) => {
  const server = await ownServer(t, undefined, undefined, ["--min-disappearing-secs", "1"]);
  const quy = await openPage(browser, server);
  const rae = await openPage(browser, server);
  await registerInPage(quy, "quy");
  await registerInPage(rae, "rae");
  await roomWith(quy, "vanish", { rae });
  await sendText(quy, "this one stays");
  await message(rae, "this one stays").waitFor(WAIT);

  // The picker offers 5 minutes and up; the server here allows 1 s, so the test adds a 3 s choice to the same control.
  await quy.evaluate(() => document.getElementById("timer-select").append(new Option("3 seconds", "3")));
  await quy.getByLabel("Disappearing messages").selectOption("3");
  for (const page of [quy, rae]) await page.locator("#timeline .event", { hasText: "quy set messages to disappear after 3 seconds" }).waitFor(WAIT);
  await sendText(quy, "gone in three");
  for (const page of [quy, rae]) await message(page, "gone in three").waitFor(WAIT);
  for (const page of [quy, rae]) {
    await message(page, "gone in three").waitFor({ state: "detached", timeout: 15_000 });
    // Replaced, never a gap (§21): the sender stays, the words go.
    await page.locator("#timeline li.msg.erased", { hasText: "message expired" }).filter({ hasText: "quy" }).waitFor(WAIT);
  }
  assert.equal(await message(rae, "this one stays").count(), 1, "a message from before the timer stays");
  const stored = await storedTexts(rae, "rae");
  assert.ok(stored.includes("this one stays"), JSON.stringify(stored));
  assert.ok(!stored.includes("gone in three"), "the expired message left the store");

  await quy.getByLabel("Disappearing messages").selectOption("0");
  await rae.locator("#timeline .event", { hasText: "quy turned off disappearing messages" }).waitFor(WAIT);
  await rae.reload();
  await openConversation(rae, "vanish");
  await message(rae, "this one stays").waitFor(WAIT);
  assert.equal(await message(rae, "gone in three").count(), 0);
  assert.deepEqual([...quy.errors, ...rae.errors], []);
});

test("a timer set in the terminal shows in the page, and the page's in hush read --json", async (t) => {
  const server = await ownServer(t);
  const keys = tempDir("social-keys");
  t.after(() => removeDir(keys));
  hush(server, keys, "sol", ["keys", "new", "sol", "--bits", "2048"]);
  hush(server, keys, "sol", ["register"]);
  const tam = await openPage(browser, server);
  await registerInPage(tam, "tam");
  await roomWith(tam, "timed", { sol: null });
  await tam.locator("#timeline .event", { hasText: "tam invited sol" }).waitFor(WAIT);
  hush(server, keys, "sol", ["room", "join", "timed"]);
  await tam.locator("#timeline .event", { hasText: "sol joined" }).waitFor(WAIT);

  await tam.getByLabel("Disappearing messages").selectOption("86400");
  await tam.locator("#timeline .event", { hasText: "tam set messages to disappear after 1 day" }).waitFor(WAIT);
  const read = () => hush(server, keys, "sol", ["read", "--room", "timed", "--json", "--save-dir", join(keys, "saved")])
    .trim().split("\n").map((l) => JSON.parse(l));
  const events = read().filter((l) => l.kind === "event").map((l) => l.text);
  assert.ok(events.includes("tam set messages to disappear after 1 day"), JSON.stringify(events));

  hush(server, keys, "sol", ["timer", "--room", "timed", "1h"]);
  await tam.locator("#timeline .event", { hasText: "sol set messages to disappear after 1 hour" }).waitFor(WAIT);
  await tam.waitForFunction(() => document.getElementById("timer-select").value === "3600", null, WAIT);
  assert.deepEqual(read().filter((l) => l.kind === "rejected"), []);
  assert.deepEqual(tam.errors, []);
});
