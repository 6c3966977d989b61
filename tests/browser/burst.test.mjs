// Issue 14: a burst typed faster than the server's message rate. Sends the
// server refuses for now (`rate_limited`, and the later ones it holds
// behind the first refusal) go again in refusal order after the server's
// wait, so every reader opens every message, in order, none rejected and
// none late.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import {
  launchBrowser, message, openPage, ownServer, registerInPage, roomWith, screenshot, sendText, shownTexts, watchSockets,
} from "./harness.mjs";

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

test("a burst of 60 messages past the rate limit reaches the reader complete and in order", async (t) => {
  const server = await ownServer(t, undefined, undefined, ["--message-rate", "5/s:10"]);
  const ada = await openPage(browser, server);
  const ben = await openPage(browser, server);
  const seen = watchSockets(ada);
  await registerInPage(ada, "ada");
  await registerInPage(ben, "ben");
  await roomWith(ada, "paste", { ben });

  const texts = Array.from({ length: 60 }, (_, i) => `line ${String(i + 1).padStart(2, "0")} of the paste`);
  const started = Date.now();
  for (const text of texts) await sendText(ada, text);
  const typedMs = Date.now() - started;
  await ada.locator("#connection", { hasText: /\d+ waiting to send/ }).waitFor();
  await screenshot(ada, "13-burst-waiting-to-send");
  await message(ben, texts.at(-1)).waitFor({ timeout: 60_000 });
  const deliveredMs = Date.now() - started;
  await ada.locator("#connection", { hasText: /^Connected$/ }).waitFor();
  await ada.locator("#timeline li.pending").first().waitFor({ state: "detached" });

  t.diagnostic(`typed in ${typedMs} ms; all delivered after ${deliveredMs} ms; ${seen.sends} send frames, `
    + `${seen.rateLimited} refused as rate_limited (${seen.held} of them held behind an earlier refusal)`);
  assert.ok(seen.rateLimited >= 1, "the burst met the rate limit");
  assert.equal(seen.sockets, 1, "no reconnect was needed");
  for (const page of [ben, ada]) {
    assert.deepEqual(await shownTexts(page), texts, "every message once, in typing order");
    assert.equal(await page.locator("#timeline li.rejected").count(), 0, "nothing rejected");
    assert.equal(await page.locator("#timeline li.late").count(), 0, "nothing stored out of order");
  }
  assert.deepEqual([...ada.errors, ...ben.errors], []);
  await ada.context().close();
  await ben.context().close();
});
