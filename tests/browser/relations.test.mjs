// Replies, edits, deletes for everyone and reactions (PROTOCOL.md §21)
// between two pages and between the page and the real `hush` binary: what
// one side does, the other shows (and `hush read --json` prints); a delete
// takes the message off the other page and its ciphertext out of the
// server's database; reply and react driven with the keyboard alone.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import {
  hush, launchBrowser, openConversation, openPage, registerInPage, removeDir, roomWith, screenshot, sendText, ownServer, tempDir,
} from "./harness.mjs";

const WAIT = { timeout: 20_000 };

/** The message (from the log) whose own text is exactly `text` (a reply quoting it does not count). */
const message = (page, text) => page.locator("#timeline li.msg:not(.pending)", {
  has: page.locator(":scope > .body > .text", { hasText: new RegExp(`^${text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`) }),
});

let browser;
let work;
before(async () => {
  browser = await launchBrowser();
  work = tempDir("relations");
});
after(async () => {
  await browser?.close();
  removeDir(work);
});

/** Presses `key` until `isThere` (run in the page) holds, at most `max` times. */
async function pressUntil(page, key, isThere, max = 40) {
  for (let i = 0; i < max; i++) {
    if (await page.evaluate(isThere)) return;
    await page.keyboard.press(key);
  }
  assert.fail(`focus never reached the wanted control with ${key}`);
}

/** The `send` bodies (base64) the page sent, in order. */
function watchSends(page) {
  const bodies = [];
  page.on("websocket", (ws) => ws.on("framesent", (f) => {
    const frame = JSON.parse(String(f.payload));
    if (frame.type === "send") bodies.push(frame);
  }));
  return bodies;
}

/** Whether `needle` (bytes) is anywhere in the server's database files (main file and write-ahead log). */
function inDatabase(server, needle) {
  return [server.db, `${server.db}-wal`].some((file) => existsSync(file) && readFileSync(file).includes(needle));
}

async function waitFor(what, check, ms = 15_000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.fail(`timed out waiting for ${what}`);
}

test("reply and react with the keyboard alone, edit and delete for everyone between two pages", async (t) => {
  const server = await ownServer(t);
  const ann = await openPage(browser, server);
  const ben = await openPage(browser, server);
  const annSends = watchSends(ann);
  await registerInPage(ann, "ann");
  await registerInPage(ben, "ben");
  await roomWith(ann, "lunch", { ben });
  await sendText(ann, "Lunch on Friday?");
  await message(ben, "Lunch on Friday?").waitFor(WAIT);

  // ben, keyboard only: from the composer back to the Reply button of ann's message.
  await ben.getByLabel("Message", { exact: true }).focus();
  const onAction = (action, text) => `(() => { const a = document.activeElement; return a?.dataset.action === ${JSON.stringify(action)} && a.closest("li")?.querySelector(":scope > .body > .text")?.textContent === ${JSON.stringify(text)}; })()`;
  await pressUntil(ben, "Shift+Tab", onAction("reply", "Lunch on Friday?"));
  await ben.keyboard.press("Enter");
  await ben.locator("#compose-context", { hasText: "Replying to ann: Lunch on Friday?" }).waitFor(WAIT);
  assert.equal(await ben.evaluate(() => document.activeElement.id), "message-input");
  await ben.keyboard.type("Yes, Friday.");
  await ben.keyboard.press("Enter");
  const reply = message(ann, "Yes, Friday.");
  await reply.waitFor(WAIT);
  assert.equal(await reply.locator(".quote").textContent(), "ann: Lunch on Friday?");
  assert.equal(await message(ben, "Yes, Friday.").locator(".quote").textContent(), "ann: Lunch on Friday?");

  // ben reacts to ann's message: Shift+Tab to its React button, Enter, Enter on 👍.
  await ben.getByLabel("Message", { exact: true }).focus();
  await pressUntil(ben, "Shift+Tab", onAction("react", "Lunch on Friday?"));
  await ben.keyboard.press("Enter");
  assert.equal(await ben.evaluate(() => document.activeElement.getAttribute("aria-label")), "React 👍");
  await ben.keyboard.press("Enter");
  for (const page of [ann, ben]) {
    await message(page, "Lunch on Friday?").getByRole("button", { name: "👍 by ben" }).waitFor(WAIT);
    assert.equal((await message(page, "Lunch on Friday?").locator(".reaction").textContent()).trim(), "👍 1");
  }
  // Reacting again with the same emoji takes it back.
  await message(ben, "Lunch on Friday?").getByRole("button", { name: "👍 by ben" }).press("Enter");
  await message(ann, "Lunch on Friday?").locator(".reaction").waitFor({ state: "detached", ...WAIT });

  // ann edits her message: both pages show the new text, marked edited; the reply's quote follows.
  await message(ann, "Lunch on Friday?").getByRole("button", { name: "Edit" }).click();
  await ann.getByLabel("Message", { exact: true }).fill("Lunch on Friday at 12?");
  await ann.getByLabel("Message", { exact: true }).press("Enter");
  for (const page of [ann, ben]) {
    const edited = message(page, "Lunch on Friday at 12?");
    await edited.locator(".edited").waitFor(WAIT);
    assert.match(await edited.locator(".meta").textContent(), /\(edited\)/);
    await page.locator(".quote", { hasText: "ann: Lunch on Friday at 12?" }).waitFor(WAIT);
  }

  await message(ben, "Lunch on Friday at 12?").getByRole("button", { name: "React" }).click();
  await ben.getByRole("button", { name: "React 🎉" }).click();
  await message(ann, "Lunch on Friday at 12?").getByRole("button", { name: "🎉 by ben" }).waitFor(WAIT);
  await screenshot(ann, "21-reply-edit-reaction");

  // ann deletes a message for everyone: gone from ben's page, and its ciphertext from the server's database.
  await sendText(ann, "Oops, wrong room");
  await message(ben, "Oops, wrong room").waitFor(WAIT);
  // The envelope's ciphertext starts after its 59 + 3 header bytes ("ann").
  const ciphertext = Buffer.from(annSends.at(-1).body, "base64").subarray(62, 100);
  await message(ann, "Oops, wrong room").getByRole("button", { name: "Delete" }).click();
  await ann.getByRole("button", { name: "Delete for everyone" }).click();
  for (const page of [ann, ben]) {
    await page.locator("#timeline li.msg.deleted", { hasText: "message deleted" }).waitFor(WAIT);
    assert.equal(await message(page, "Oops, wrong room").count(), 0);
  }
  assert.ok(annSends.some((f) => f.erase !== undefined), "the delete asked the server to erase its target");
  await waitFor("the deleted message's ciphertext to leave the database files", () => !inDatabase(server, ciphertext));
  // ben's store no longer holds the text: a reload shows the tombstone only.
  await ben.reload();
  await openConversation(ben, "lunch");
  await ben.locator("#timeline li.msg.deleted", { hasText: "message deleted" }).waitFor(WAIT);
  assert.equal(await message(ben, "Oops, wrong room").count(), 0);
  assert.deepEqual([...ann.errors, ...ben.errors], []);
});

/** `hush read --json` lines of `user` in the room named `room`. */
function readJson(server, keys, user, room) {
  return hush(server, keys, user, ["read", "--room", room, "--json", "--save-dir", join(work, `saved-${user}`)])
    .trim().split("\n").filter(Boolean).map((line) => JSON.parse(line));
}

test("a reply, an edit and a reaction made in the page show in hush read --json, and the CLI's in the page", async (t) => {
  const server = await ownServer(t);
  const keys = join(work, "keys");
  hush(server, keys, "cal", ["keys", "new", "cal", "--bits", "2048"]);
  hush(server, keys, "cal", ["register"]);
  const dot = await openPage(browser, server);
  await registerInPage(dot, "dot");
  await roomWith(dot, "plans", { cal: null });
  await dot.locator("#timeline .event", { hasText: "dot invited cal" }).waitFor(WAIT);
  hush(server, keys, "cal", ["room", "join", "plans"]);
  await dot.locator("#timeline .event", { hasText: "cal joined" }).waitFor(WAIT);
  hush(server, keys, "cal", ["send", "--room", "plans", "Meet at 10?"]);
  await message(dot, "Meet at 10?").waitFor(WAIT);

  // The page replies, reacts and edits its own reply.
  await message(dot, "Meet at 10?").getByRole("button", { name: "Reply" }).click();
  await sendText(dot, "10 is fine");
  await message(dot, "10 is fine").waitFor(WAIT);
  await message(dot, "Meet at 10?").getByRole("button", { name: "React" }).click();
  await dot.getByRole("button", { name: "React 🎉" }).click();
  await message(dot, "Meet at 10?").getByRole("button", { name: "🎉 by dot" }).waitFor(WAIT);
  await message(dot, "10 is fine").getByRole("button", { name: "Edit" }).click();
  await dot.getByLabel("Message", { exact: true }).fill("10:30 is better");
  await dot.getByLabel("Message", { exact: true }).press("Enter");
  await message(dot, "10:30 is better").locator(".edited").waitFor(WAIT);

  const lines = readJson(server, keys, "cal", "plans");
  const question = lines.find((l) => l.kind === "message" && l.text === "Meet at 10?");
  assert.ok(question, JSON.stringify(lines));
  assert.deepEqual(question.reactions, { "🎉": ["dot"] });
  const answer = lines.find((l) => l.kind === "message" && l.sender === "dot");
  assert.equal(answer.reply_to, question.seq);
  assert.equal(answer.edited, true);
  assert.equal(answer.text, "10:30 is better");
  assert.ok(lines.some((l) => l.kind === "edit" && l.of === answer.seq && l.text === "10:30 is better"));
  assert.ok(lines.some((l) => l.kind === "react" && l.of === question.seq && l.emoji === "🎉" && l.sender === "dot"));

  // The CLI replies, edits and reacts; the page shows it.
  hush(server, keys, "cal", ["send", "--room", "plans", "--reply", String(answer.seq), "Ok, 10:30"]);
  const calReply = message(dot, "Ok, 10:30");
  await calReply.waitFor(WAIT);
  assert.equal(await calReply.locator(".quote").textContent(), "dot: 10:30 is better");
  const lines2 = readJson(server, keys, "cal", "plans");
  const calLine = lines2.find((l) => l.kind === "message" && l.text === "Ok, 10:30");
  hush(server, keys, "cal", ["edit", "--room", "plans", String(calLine.seq), "Ok, 10:30 at the door"]);
  await message(dot, "Ok, 10:30 at the door").locator(".edited").waitFor(WAIT);
  hush(server, keys, "cal", ["react", "--room", "plans", String(answer.seq), "👍"]);
  await message(dot, "10:30 is better").getByRole("button", { name: "👍 by cal" }).waitFor(WAIT);
  hush(server, keys, "cal", ["delete", "--room", "plans", String(question.seq)]);
  await dot.locator("#timeline li.msg.deleted", { hasText: "message deleted" }).waitFor(WAIT);
  assert.equal(await message(dot, "Meet at 10?").count(), 0);
  assert.deepEqual(dot.errors, []);
});

test("an edit or a delete of someone else's message is rejected and changes nothing; a relation to a later message too", async (t) => {
  const { RawUser, c, fixtureIdentity } = await import("./raw.mjs");
  const server = await ownServer(t);
  const uma = await openPage(browser, server);
  await registerInPage(uma, "uma");
  const carol = await fixtureIdentity("carol");
  const vic = await RawUser.register(server, "vic", carol);
  const wire = await openPage(browser, server); // a page of the origin, for the raw WebSocket
  await roomWith(uma, "notes", { vic: null });
  await uma.locator("#timeline .event", { hasText: "uma invited vic" }).waitFor(WAIT);
  const room = (await vic.api("GET", "/invitations"))[0].room;
  await vic.api("POST", `/rooms/${room}/join`);
  await uma.locator("#timeline .event", { hasText: "vic joined" }).waitFor(WAIT);
  await sendText(uma, "The original words");
  const original = message(uma, "The original words");
  await original.waitFor(WAIT);
  const target = Number(await original.getAttribute("data-seq"));

  const device = c.newDeviceId();
  const key = await c.senderKey(1, c.randomBytes(32));
  const recipients = [{ username: "vic", identity: carol.public }, { username: "uma", identity: await vic.publicKeyOf("uma") }];
  const distribution = await c.sealDistribution(room, "vic", device, key, recipients, carol);
  const seal = (counter, payload) => c.sealEnvelope(room, "vic", device, key, BigInt(counter), payload, carol);
  const bodies = [
    distribution,
    await seal(0, c.editPayload(target, "words vic put in uma's mouth")),
    await seal(1, c.deletePayload(target)),
    await seal(2, c.reactPayload(target, "🙃")),
    await seal(3, c.reactPayload(target + 1000, "🙃")),
    await seal(4, c.textPayload("after the forgeries")),
  ];
  const { replies } = await vic.exchange(wire, { sends: bodies.map((body) => ({ room, body })) });
  assert.deepEqual(replies.map((r) => r.type), bodies.map(() => "ack"), JSON.stringify(replies));
  await message(uma, "after the forgeries").waitFor(WAIT);
  const rejected = await uma.locator("#timeline li.msg.rejected").allTextContents();
  assert.equal(rejected.length, 3, JSON.stringify(rejected));
  assert.match(rejected[0], /an edit of someone else's message/);
  assert.match(rejected[1], /a delete of someone else's message/);
  assert.match(rejected[2], /not an earlier message/);
  assert.equal(await original.count(), 1, "uma's message is unchanged");
  assert.equal(await original.locator(".edited").count(), 0);
  await original.getByRole("button", { name: "🙃 by vic" }).waitFor(WAIT);
  assert.deepEqual(uma.errors, []);
});

test("a delete made in the page shows as deleted in hush read --json, its text gone", async (t) => {
  const server = await ownServer(t);
  const keys = join(work, "keys-delete");
  hush(server, keys, "eli", ["keys", "new", "eli", "--bits", "2048"]);
  hush(server, keys, "eli", ["register"]);
  hush(server, keys, "fez", ["keys", "new", "fez", "--bits", "2048"]);
  hush(server, keys, "fez", ["register"]);
  const dot = await openPage(browser, server);
  await registerInPage(dot, "dot");
  await roomWith(dot, "drafts", { eli: null, fez: null });
  for (const user of ["eli", "fez"]) {
    await dot.locator("#timeline .event", { hasText: `dot invited ${user}` }).waitFor(WAIT);
    hush(server, keys, user, ["room", "join", "drafts"]);
    await dot.locator("#timeline .event", { hasText: `${user} joined` }).waitFor(WAIT);
  }
  await sendText(dot, "kept note");
  // A delete in the page: the terminal shows the message as deleted, its text gone.
  await sendText(dot, "temporary note");
  await message(dot, "temporary note").waitFor(WAIT);
  // The terminal reads it once, so its store holds the text the delete must drop.
  assert.ok(readJson(server, keys, "eli", "drafts").some((l) => l.text === "temporary note"));
  await message(dot, "temporary note").getByRole("button", { name: "Delete" }).click();
  await dot.getByRole("button", { name: "Delete for everyone" }).click();
  await dot.locator("#timeline li.msg.deleted").waitFor(WAIT);
  const afterDelete = readJson(server, keys, "eli", "drafts");
  assert.ok(!afterDelete.some((l) => l.text === "temporary note"), "the terminal no longer has the text");
  const deletedLine = afterDelete.find((l) => l.kind === "message" && l.deleted === true && l.sender === "dot");
  assert.ok(deletedLine, JSON.stringify(afterDelete));
  assert.ok(afterDelete.some((l) => l.kind === "delete" && l.of === deletedLine.seq));

  assert.ok(afterDelete.some((l) => l.kind === "message" && l.text === "kept note"));
  // fez reads for the first time after the delete: the server hands him the tombstone, then the delete.
  const fresh = readJson(server, keys, "fez", "drafts");
  assert.ok(!fresh.some((l) => l.text === "temporary note"));
  assert.ok(fresh.some((l) => l.seq === deletedLine.seq && l.kind === "message" && l.deleted === true), JSON.stringify(fresh));
  assert.deepEqual(dot.errors, []);
});
