// The server restarts (same database, same port) under two open pages:
// each page shows it is offline, queues what is typed meanwhile, reconnects
// by itself, resyncs from its cursors and shows every message exactly once.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { launchBrowser, message, openPage, registerInPage, removeDir, roomWith, screenshot, sendText, startServer, tempDir } from "./harness.mjs";

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

test("the page reconnects after a server restart, sends what was queued, and shows nothing twice", async (t) => {
  const dir = tempDir("restart");
  let server = await startServer(dir);
  t.after(async () => {
    await server.stop();
    removeDir(dir);
  });
  const eve = await openPage(browser, server);
  const fay = await openPage(browser, server);
  await registerInPage(eve, "eve");
  await registerInPage(fay, "fay");
  // Invites only once the new room is open (roomWith waits for it).
  await roomWith(eve, "lobby", { fay });
  await sendText(eve, "before the restart");
  await message(fay, "before the restart").waitFor();
  await sendText(fay, "fay was here first");
  await message(eve, "fay was here first").waitFor();

  const { port } = server;
  assert.equal(await server.stop(), 0, "hush serve stops cleanly on SIGTERM");
  for (const page of [eve, fay]) await page.locator("#connection[data-state=offline]").waitFor();

  // Typed while offline: shown as waiting, not lost.
  await sendText(eve, "typed while offline, one");
  await sendText(eve, "typed while offline, two");
  await eve.locator("#timeline li.pending.queued").nth(1).waitFor();
  await eve.locator("#connection", { hasText: "waiting to send" }).waitFor();
  await screenshot(eve, "08-offline-with-queued-messages");

  server = await startServer(dir, port);
  for (const page of [eve, fay]) await page.locator("#connection[data-state=online]").waitFor({ timeout: 30_000 });
  await message(fay, "typed while offline, two").waitFor();
  await message(eve, "typed while offline, two").waitFor();
  await eve.locator("#timeline li.pending").first().waitFor({ state: "detached" });
  await sendText(fay, "after the restart");
  await message(eve, "after the restart").waitFor();

  const expected = ["before the restart", "fay was here first", "typed while offline, one", "typed while offline, two", "after the restart"];
  for (const page of [eve, fay]) {
    await message(page, "after the restart").waitFor();
    const texts = await page.locator("#timeline li.msg .text").allTextContents();
    assert.deepEqual(texts, expected, "every message once, in order");
    assert.equal(await page.locator("#timeline li.rejected").count(), 0);
    assert.equal(await page.locator("#timeline .event", { hasText: "fay joined" }).count(), 1);
  }
  await screenshot(eve, "09-after-reconnect");
  assert.deepEqual([...eve.errors, ...fay.errors].filter((e) => !/WebSocket|ERR_CONNECTION_REFUSED|Failed to load resource/.test(e)), []);
  await eve.context().close();
  await fay.context().close();
});
