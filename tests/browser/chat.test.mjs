// Two people in two browser contexts: sign up in the page, chat in a room
// and in a DM, see unread counts, presence and the safety number; the page
// sends only protocol frames (no plaintext) and talks to no other host.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  connected, foreignRequests, launchBrowser, message, openConversation, openPage, registerInPage, screenshot, sendText, ownServer,
} from "./harness.mjs";

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

/** 0.25 s of a 440 Hz tone as 8 kHz 8-bit mono WAV. */
function wav() {
  const samples = Buffer.from(Array.from({ length: 2000 }, (_, i) => 128 + Math.round(100 * Math.sin((2 * Math.PI * 440 * i) / 8000))));
  const header = Buffer.alloc(44);
  header.write("RIFF", 0);
  header.writeUInt32LE(36 + samples.length, 4);
  header.write("WAVEfmt ", 8);
  header.writeUInt32LE(16, 16);
  header.writeUInt16LE(1, 20); // PCM
  header.writeUInt16LE(1, 22); // mono
  header.writeUInt32LE(8000, 24);
  header.writeUInt32LE(8000, 28);
  header.writeUInt16LE(1, 32);
  header.writeUInt16LE(8, 34);
  header.write("data", 36);
  header.writeUInt32LE(samples.length, 40);
  return Buffer.concat([header, samples]);
}

/** Records every WebSocket frame and request body the page sends. */
function recordOutgoing(page) {
  const sent = [];
  page.on("websocket", (ws) => ws.on("framesent", (f) => sent.push(String(f.payload))));
  page.on("request", (r) => r.postData() && sent.push(r.postData()));
  return sent;
}

test("two browser users chat in a room and in a DM", async (t) => {
  const server = await ownServer(t);
  const ann = await openPage(browser, server);
  const ben = await openPage(browser, server);
  const annSent = recordOutgoing(ann);
  await screenshot(ann, "01-welcome");
  await registerInPage(ann, "ann");
  await registerInPage(ben, "ben");

  // ann creates a room and invites ben; ben joins from the invitation list.
  await ann.getByLabel("New room").fill("garden");
  await ann.getByRole("button", { name: "Create", exact: true }).click();
  await ann.locator("#room-title").filter({ hasText: "garden" }).waitFor();
  await ann.getByLabel("Invite someone").fill("ben");
  await ann.getByRole("button", { name: "Invite", exact: true }).click();
  await ben.getByRole("button", { name: "Join garden" }).click();
  await ben.locator("#room-title").filter({ hasText: "garden" }).waitFor();
  await ann.locator("#timeline .event", { hasText: "ben joined" }).waitFor();

  const secret = "the tulips bloom at dawn";
  await sendText(ann, secret);
  await message(ben, secret).waitFor();
  await sendText(ben, "lovely, see you there");
  await message(ann, "lovely, see you there").waitFor();
  assert.equal(await message(ann, secret).getAttribute("class"), "msg own", "own messages are marked");
  assert.match(await message(ben, secret).locator(".sender").textContent(), /^ann$/);
  await ann.locator("#timeline li.day").first().waitFor();

  // Audio plays inline; other files download; both encrypted end to end.
  await ann.locator("#file-input").setInputFiles({ name: "chirp.wav", mimeType: "audio/wav", buffer: wav() });
  await ann.locator("#file-input").setInputFiles({ name: "plan.txt", mimeType: "text/plain", buffer: Buffer.from("dig, plant, water") });
  const audio = ben.locator('#timeline li.msg audio[aria-label="chirp.wav"]');
  await audio.waitFor();
  const duration = await audio.evaluate((node) => new Promise((done, fail) => {
    if (node.readyState >= 1) return done(node.duration);
    node.addEventListener("loadedmetadata", () => done(node.duration));
    node.addEventListener("error", () => fail(new Error("the audio does not load")));
  }));
  assert.ok(duration > 0.2 && duration < 0.3, `plays 0.25 s of audio (${duration})`);
  const [download] = await Promise.all([ben.waitForEvent("download"), ben.getByRole("link", { name: /^Download plan\.txt/ }).click()]);
  assert.equal(download.suggestedFilename(), "plan.txt");
  assert.equal(readFileSync(await download.path(), "utf8"), "dig, plant, water");

  // Online list: both see each other.
  await ann.locator("#online-list li", { hasText: "ben" }).waitFor();

  // DM by name; ben is in the room view, so the DM shows as unread.
  await ann.getByLabel("Direct message").fill("ben");
  await ann.getByRole("button", { name: "Open" }).click();
  await ann.locator("#room-title").filter({ hasText: "@ben" }).waitFor();
  await sendText(ann, "a private word");
  await sendText(ann, "and another");
  const dmButton = ben.locator(".room-button", { has: ben.locator(".room-name", { hasText: /^ann$/ }) });
  await dmButton.locator(".badge", { hasText: "2" }).waitFor();
  await screenshot(ben, "02-room-with-unread-dm");
  await openConversation(ben, "ann");
  await message(ben, "and another").waitFor();
  await assert.doesNotReject(dmButton.locator(".badge").waitFor({ state: "detached" }));
  await sendText(ben, "received both");
  await message(ann, "received both").waitFor();
  await screenshot(ann, "03-direct-message");

  // Each message shows exactly once on both sides.
  await message(ben, "received both").waitFor();
  for (const page of [ann, ben]) {
    assert.equal(await message(page, "a private word").count(), 1);
    assert.equal(await page.locator("#timeline li.msg").count(), 3, "three messages in the DM");
  }

  // Safety number: the same on both sides; ann marks ben verified.
  await ann.getByRole("button", { name: "Keys & safety number" }).click();
  const annNumber = await ann.getByTestId("safety-ben").textContent();
  await ben.getByRole("button", { name: "Keys & safety number" }).click();
  const benNumber = await ben.getByTestId("safety-ann").textContent();
  assert.match(annNumber, /^(\d{5}[ \n]){11}\d{5}$/);
  assert.equal(annNumber, benNumber);
  await ann.getByRole("button", { name: "Mark ben verified" }).click();
  await ann.getByText("✓ Verified").waitFor();
  await screenshot(ann, "04-safety-number");
  for (const page of [ann, ben]) {
    await page.keyboard.press("Escape");
    await page.locator("#security-dialog").waitFor({ state: "hidden" });
  }

  // Nothing but ciphertext left the page; no other host was contacted.
  for (const text of [secret, "a private word", "and another"]) {
    assert.ok(!annSent.some((s) => s.includes(text)), `"${text}" never leaves the page in clear`);
  }
  assert.ok(annSent.some((s) => s.includes('"type":"send"')));
  assert.deepEqual(foreignRequests(ann, server), []);
  assert.deepEqual([...ann.errors, ...ben.errors], []);

  // Phone width: the list, then one conversation with a back button.
  const phone = await openPage(browser, server, { viewport: { width: 390, height: 780 } });
  await phone.locator("#login-username").fill("ann");
  await phone.locator("#login-password").fill("password of ann");
  await phone.getByRole("button", { name: "Log in", exact: true }).click();
  await phone.getByText("This browser has no key for ann").waitFor();
  await ann.context().close();
  await ben.context().close();
  await phone.context().close();
});

test("a signed-in user comes back to the same conversations after reloading the page", async (t) => {
  const server = await ownServer(t);
  const cat = await openPage(browser, server, { viewport: { width: 390, height: 780 } });
  await registerInPage(cat, "cat");
  await cat.getByLabel("New room").fill("notes");
  await cat.getByRole("button", { name: "Create", exact: true }).click();
  await sendText(cat, "note to self");
  await message(cat, "note to self").waitFor();
  assert.equal(await cat.locator("#sidebar").isVisible(), false, "phone width shows one pane");
  await screenshot(cat, "05-phone-conversation");
  await cat.reload();
  await connected(cat);
  await openConversation(cat, "notes");
  await message(cat, "note to self").waitFor();
  assert.equal(await message(cat, "note to self").count(), 1);
  await screenshot(cat, "06-phone-after-reload");
  assert.deepEqual(cat.errors, []);
  await cat.context().close();
});
