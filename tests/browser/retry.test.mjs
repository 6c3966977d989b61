// A send the server refuses for now (`rate_limited`) is not stored; the page
// sends it again with the same client id once `retry_after_ms` has passed,
// on the same connection, instead of leaving it pending until a reconnect.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { launchBrowser, message, openPage, ownServer, registerInPage, screenshot, sendText } from "./harness.mjs";

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

/** Counts the page's WebSocket connections and the `rate_limited` errors they receive. */
function watchSockets(page) {
  const seen = { sockets: 0, rateLimited: 0 };
  page.on("websocket", (ws) => {
    seen.sockets += 1;
    ws.on("framereceived", (f) => {
      const frame = JSON.parse(String(f.payload));
      if (frame.type === "error" && frame.code === "rate_limited") seen.rateLimited += 1;
    });
  });
  return seen;
}

test("messages refused as rate limited are sent again on the same connection", async (t) => {
  // Two sends at once, then one a second: a burst of six is partly refused.
  const server = await ownServer(t, undefined, undefined, ["--message-rate", "1/s:2"]);
  const ida = await openPage(browser, server);
  const seen = watchSockets(ida);
  await registerInPage(ida, "ida");
  await ida.getByLabel("New room").fill("burst");
  await ida.getByRole("button", { name: "Create", exact: true }).click();
  await ida.locator("#room-title").filter({ hasText: "burst" }).waitFor();

  const texts = Array.from({ length: 6 }, (_, i) => `burst message ${i + 1}`);
  for (const text of texts) await sendText(ida, text);
  for (const text of texts) await message(ida, text).waitFor({ timeout: 20_000 });
  await ida.locator("#timeline li.pending").first().waitFor({ state: "detached" });
  await ida.locator("#connection", { hasText: /^Connected$/ }).waitFor();
  await screenshot(ida, "12-after-rate-limited-burst");

  t.diagnostic(`${seen.rateLimited} sends refused as rate limited`);
  assert.ok(seen.rateLimited >= 1, `the burst met the rate limit (${seen.rateLimited} refusals)`);
  assert.equal(seen.sockets, 1, "no reconnect was needed");
  const shown = await ida.locator("#timeline li.msg .text").allTextContents();
  assert.deepEqual([...shown].sort(), texts, "every message once");
  assert.deepEqual(ida.errors, []);
  await ida.context().close();
});
