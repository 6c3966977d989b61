// Issue 15, the page as a person uses it: keyboard focus stays put when
// messages, read marks and presence changes arrive; the tab title counts
// unread messages; a conversation with images opens at its newest message
// and a live image is not cut off; a key rotation notice and the header
// fit a phone (375×667).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  connected, hush, launchBrowser, message, openConversation, openPage, openPageIn, ownServer, registerInPage, removeDir, roomWith, screenshot,
  sendText, tempDir,
} from "./harness.mjs";

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

/** What has keyboard focus, as a stable description. */
const focused = (page) => page.evaluate(() => {
  const a = document.activeElement;
  return a ? `${a.tagName}#${a.id}[${a.dataset.room ?? ""}]` : "none";
});

/** A PNG of `width`×`height`, drawn by the page. */
async function png(page, width, height) {
  const b64 = await page.evaluate(async ({ width, height }) => {
    const canvas = new OffscreenCanvas(width, height);
    const g = canvas.getContext("2d");
    g.fillStyle = "#3a7";
    g.fillRect(0, 0, width, height);
    g.fillStyle = "#fff";
    g.fillRect(10, 10, width - 20, 20);
    const bytes = new Uint8Array(await (await canvas.convertToBlob({ type: "image/png" })).arrayBuffer());
    let s = "";
    for (const b of bytes) s += String.fromCharCode(b);
    return btoa(s);
  }, { width, height });
  return Buffer.from(b64, "base64");
}

/** The timeline shows its end (within two pixels), once every image has loaded. */
async function atBottom(page) {
  return page.locator("#timeline").evaluate(async (t) => {
    await Promise.all([...t.querySelectorAll("img")].map((img) => (img.complete ? null : new Promise((done) => {
      img.addEventListener("load", done, { once: true });
      img.addEventListener("error", done, { once: true });
    }))));
    await new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
    return { gap: Math.round(t.scrollHeight - t.scrollTop - t.clientHeight), ok: Math.abs(t.scrollHeight - t.scrollTop - t.clientHeight) <= 2 };
  });
}

test("keyboard focus stays put while messages, read marks and presence changes arrive; the title counts unread", async (t) => {
  const server = await ownServer(t);
  const dee = await openPage(browser, server);
  let eli = await openPage(browser, server);
  await registerInPage(dee, "dee");
  await registerInPage(eli, "eli");
  await roomWith(dee, "focus", { eli });
  await roomWith(dee, "quiet", {});
  await openConversation(dee, "focus");

  // The composer has focus; eli writes; dee's page marks them read.
  await dee.getByLabel("Message", { exact: true }).focus();
  const inComposer = await focused(dee);
  for (let i = 1; i <= 5; i++) await sendText(eli, `ping ${i}`);
  await message(dee, "ping 5").waitFor();
  await dee.waitForTimeout(500); // the read mark goes 300 ms after
  assert.equal(await focused(dee), inComposer, "the composer keeps focus");

  // A room button in the list has focus (a keyboard user moving through it).
  await dee.locator(".room-button[data-room='1']").focus();
  const onButton = await focused(dee);
  assert.match(onButton, /^BUTTON#\[1\]$/);
  await sendText(eli, "while you are in the list");
  await message(dee, "while you are in the list").waitFor();
  await dee.waitForTimeout(500);
  assert.equal(await focused(dee), onButton, "the room button keeps focus through a message and a read mark");

  // Presence: eli goes offline (the tab closes) and comes back (a new tab).
  await dee.locator("#online-list li", { hasText: "eli" }).waitFor();
  const context = eli.context();
  await eli.close();
  await dee.locator("#online-list li", { hasText: "eli" }).waitFor({ state: "detached" });
  assert.equal(await focused(dee), onButton, "the room button keeps focus when someone goes offline");
  eli = await openPageIn(context, server);
  await connected(eli);
  await dee.locator("#online-list li", { hasText: "eli" }).waitFor();
  assert.equal(await focused(dee), onButton, "the room button keeps focus when someone comes online");
  await openConversation(eli, "focus");

  // The title counts what is unread in other conversations.
  await openConversation(dee, "quiet");
  await dee.getByLabel("Message", { exact: true }).focus();
  await sendText(eli, "unread one");
  await sendText(eli, "unread two");
  await dee.waitForFunction(() => document.title === "(2) hush");
  assert.equal(await focused(dee), inComposer);
  await openConversation(dee, "focus");
  await dee.waitForFunction(() => document.title === "hush");
  assert.deepEqual([...dee.errors, ...eli.errors], []);
  await dee.context().close();
  await eli.context().close();
});

test("a conversation with images opens at its newest message, and a live image is not cut off", async (t) => {
  const server = await ownServer(t);
  const gia = await openPage(browser, server);
  const hal = await openPage(browser, server);
  await registerInPage(gia, "gia");
  await registerInPage(hal, "hal");
  await roomWith(gia, "photos", { hal });
  for (let i = 1; i <= 4; i++) {
    await sendText(hal, `photo ${i} coming`);
    await hal.locator("#file-input").setInputFiles({ name: `photo-${i}.png`, mimeType: "image/png", buffer: await png(hal, 640, 400 + i * 40) });
    await message(hal, `photo-${i}.png`).waitFor();
  }
  await sendText(hal, "that is all");
  await message(gia, "that is all").waitFor();
  // The payload carried the size: the box is reserved before the image loads.
  const img = gia.locator("#timeline img").first();
  assert.ok(Number(await img.getAttribute("height")) > 0, "the image has its size before it loads");

  await gia.reload();
  await connected(gia);
  await message(gia, "that is all").waitFor();
  const opened = await atBottom(gia);
  assert.ok(opened.ok, `opens at the newest message (${opened.gap} px above it)`);
  await openConversation(gia, "photos");

  // Live: an image arrives while gia reads the end of the conversation.
  await hal.locator("#file-input").setInputFiles({ name: "live.png", mimeType: "image/png", buffer: await png(hal, 500, 700) });
  await message(gia, "live.png").waitFor();
  const live = await atBottom(gia);
  assert.ok(live.ok, `the live image is in view (${live.gap} px cut off)`);
  const box = await gia.locator("#timeline li.msg", { hasText: "live.png" }).evaluate((li) => {
    const t = document.querySelector("#timeline").getBoundingClientRect();
    const r = li.getBoundingClientRect();
    return { cut: Math.round(r.bottom - t.bottom) };
  });
  assert.ok(box.cut <= 1, `the live image's message ends inside the timeline (${box.cut} px below)`);
  await screenshot(gia, "21-images-at-the-bottom");
  assert.deepEqual([...gia.errors, ...hal.errors], []);
  await gia.context().close();
  await hal.context().close();
});

test("at phone width the header leaves the screen to messages and a key rotation notice wraps", async (t) => {
  const server = await ownServer(t);
  const work = tempDir("ux-phone");
  t.after(() => removeDir(work));
  const keys = join(work, "keys");
  hush(server, keys, "lou", ["keys", "new", "lou", "--bits", "2048"]);
  hush(server, keys, "lou", ["register"]);
  const kim = await openPage(browser, server, { viewport: { width: 375, height: 667 }, isMobile: true, hasTouch: true });
  await registerInPage(kim, "kim");
  // After sign-up the page asks for the key backup.
  await kim.locator("#backup-due").getByText("Download your key backup now.").waitFor();
  await screenshot(kim, "22-phone-backup-prompt");
  const [download] = await Promise.all([kim.waitForEvent("download"), kim.locator("#backup-due").getByRole("button", { name: "Download key backup" }).click()]);
  assert.equal(download.suggestedFilename(), "kim.hush-key.json");
  await kim.locator("#backup-due").waitFor({ state: "hidden" });

  await kim.getByLabel("Direct message").fill("lou");
  await kim.getByRole("button", { name: "Open" }).click();
  await kim.locator("#room-title").filter({ hasText: "@lou" }).waitFor();
  await sendText(kim, "hello lou");
  hush(server, keys, "lou", ["send", "--to", "kim", "hello kim"]);
  await message(kim, "hello kim").waitFor();
  for (let i = 0; i < 12; i++) hush(server, keys, "lou", ["send", "--to", "kim", `filler ${i}`]);
  await message(kim, "filler 11").waitFor();

  const layout = await kim.evaluate(() => {
    const h = (sel) => document.querySelector(sel).getBoundingClientRect().height;
    return { topbar: h(".topbar"), roomHeader: h(".room-header"), timeline: h("#timeline"), height: innerHeight };
  });
  const header = layout.topbar + layout.roomHeader;
  assert.ok(header <= 0.25 * layout.height, `header ${header} px of ${layout.height}`);
  assert.ok(layout.timeline >= 0.5 * layout.height, `messages get ${layout.timeline} px of ${layout.height}`);
  await screenshot(kim, "23-phone-conversation");

  hush(server, keys, "lou", ["keys", "rotate", "--bits", "2048"]);
  hush(server, keys, "lou", ["send", "--to", "kim", "with my new key"]);
  await message(kim, "with my new key").waitFor();
  const notice = kim.locator(".key-notice[data-user=lou]");
  await notice.waitFor();
  const text = await notice.textContent();
  assert.match(text, /lou has a new key/);
  assert.match(text, /New fingerprint: [0-9a-f]{4} [0-9a-f]{4} [0-9a-f]{4} [0-9a-f]{4} …/);
  assert.match(text, /compare them again/);
  const fits = await kim.evaluate(() => ({
    page: document.documentElement.scrollWidth,
    notice: document.querySelector(".key-notice").scrollWidth - document.querySelector(".key-notice").clientWidth,
    event: Math.max(...[...document.querySelectorAll("#timeline .event")].map((e) => e.getBoundingClientRect().right)),
    width: innerWidth,
  }));
  assert.ok(fits.page <= fits.width, `no horizontal scrolling (${fits.page} px wide)`);
  assert.equal(fits.notice, 0, "the notice wraps inside itself");
  assert.ok(fits.event <= fits.width, `the key event wraps (${fits.event} px)`);
  await screenshot(kim, "24-phone-key-rotation-notice");
  await kim.getByRole("button", { name: "Dismiss" }).click();
  await notice.waitFor({ state: "detached" });
  assert.deepEqual(kim.errors, []);
  await kim.context().close();
});

test("errors appear beside the form that caused them, in words a person understands", async (t) => {
  const server = await ownServer(t);
  const ivy = await openPage(browser, server);
  const register = ivy.locator("#register-form");
  await ivy.locator("#reg-username").fill("ivy");
  await ivy.locator("#reg-password").fill("password of ivy");
  await ivy.locator("#reg-passphrase").fill("one passphrase");
  await ivy.locator("#reg-passphrase2").fill("another passphrase");
  await ivy.getByLabel("Key size").selectOption("2048");
  await ivy.getByRole("button", { name: "Create account" }).click();
  await register.locator(".form-error", { hasText: "The two key passphrases differ" }).waitFor();
  await registerInPage(ivy, "ivy");

  await ivy.getByLabel("Direct message").fill("bbo");
  await ivy.getByRole("button", { name: "Open" }).click();
  await ivy.locator("#dm-form .form-error", { hasText: "There is no user named bbo." }).waitFor();
  await roomWith(ivy, "errors", {});
  await ivy.getByLabel("Invite someone").fill("bbo");
  await ivy.getByRole("button", { name: "Invite", exact: true }).click();
  await ivy.locator("#invite-form .form-error", { hasText: "There is no user named bbo." }).waitFor();
  assert.equal(await ivy.locator("#problem").isVisible(), false, "nothing at the top of the page");

  await ivy.getByRole("button", { name: "Log out" }).click();
  await ivy.locator("#login-username").fill("ivy");
  await ivy.locator("#login-password").fill("not the password");
  await ivy.getByRole("button", { name: "Log in", exact: true }).click();
  await ivy.locator("#login-form .form-error", { hasText: "Wrong username or password." }).waitFor();
  await screenshot(ivy, "25-error-beside-the-form");
  assert.deepEqual(ivy.errors.filter((e) => !/status of (401|404)/.test(e)), []);
  await ivy.context().close();
});
