// Issue 14: the same person in two tabs sending at once. Each tab claims
// its own device id, so each keeps its own sender-key chain (epochs and
// counters) and a third member reads every message of both; a reload gets
// its device id back; "Your devices" lists both tabs.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import {
  connected, launchBrowser, message, openConversation, openPage, openPageIn, ownServer, registerInPage, roomWith, screenshot,
  sendText, shownTexts,
} from "./harness.mjs";

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

/** The rows of the "Your devices" dialog: [{device, where}]. */
async function yourDevices(page) {
  await page.getByRole("button", { name: "Your devices" }).click();
  const rows = page.locator("#devices-body tr");
  await rows.first().waitFor();
  const out = [];
  for (const row of await rows.all()) {
    const cells = await row.locator("td").allTextContents();
    out.push({ device: cells[0], where: cells[1], lastSent: cells[2] });
  }
  await page.keyboard.press("Escape");
  await page.locator("#devices-dialog").waitFor({ state: "hidden" });
  return out;
}

test("two tabs of one user send at once and a third member reads every message", async (t) => {
  const server = await ownServer(t);
  const kay = await openPage(browser, server);
  const lee = await openPage(browser, server);
  await registerInPage(kay, "kay");
  await registerInPage(lee, "lee");
  await roomWith(kay, "duo", { lee });
  const kay2 = await openPageIn(kay.context(), server);
  await connected(kay2);
  await openConversation(kay2, "duo");

  const fromTab = (tab) => Array.from({ length: 12 }, (_, i) => `tab ${tab} says ${i + 1}`);
  await Promise.all([
    (async () => {
      for (const text of fromTab(1)) await sendText(kay, text);
    })(),
    (async () => {
      for (const text of fromTab(2)) await sendText(kay2, text);
    })(),
  ]);
  for (const text of [fromTab(1).at(-1), fromTab(2).at(-1)]) await message(lee, text).waitFor();

  const seen = await shownTexts(lee);
  assert.equal(seen.length, 24, "every message of both tabs, once");
  assert.deepEqual(seen.filter((x) => x.startsWith("tab 1")), fromTab(1), "tab 1's in its order");
  assert.deepEqual(seen.filter((x) => x.startsWith("tab 2")), fromTab(2), "tab 2's in its order");
  assert.equal(await lee.locator("#timeline li.rejected").count(), 0, "nothing rejected");
  for (const tab of [kay, kay2]) {
    await message(tab, fromTab(1).at(-1)).waitFor();
    await message(tab, fromTab(2).at(-1)).waitFor();
    assert.equal(await tab.locator("#timeline li.rejected").count(), 0);
  }

  // Two devices, one per tab, each "this tab" in its own page.
  const one = await yourDevices(kay);
  const two = await yourDevices(kay2);
  const here = (rows) => rows.find((r) => r.where === "this tab").device;
  assert.equal(one.length, 2, JSON.stringify(one));
  assert.notEqual(here(one), here(two), "the tabs send as different devices");
  assert.deepEqual(one.map((r) => r.device).sort(), two.map((r) => r.device).sort());
  assert.match(one.find((r) => r.device === here(two)).where, /this browser/);
  await kay.getByRole("button", { name: "Your devices" }).click();
  await screenshot(kay, "15-your-devices");
  await kay.keyboard.press("Escape");

  // A reload gets its device id back: still two devices after more messages.
  const before = here(one);
  await kay.reload();
  await connected(kay);
  await openConversation(kay, "duo");
  await sendText(kay, "after the reload");
  await message(lee, "after the reload").waitFor();
  const again = await yourDevices(kay);
  assert.equal(here(again), before, "the reloaded tab sends as the same device");
  assert.equal(again.length, 2);
  assert.deepEqual([...kay.errors, ...kay2.errors, ...lee.errors].filter((e) => !/WebSocket/.test(e)), []);
  await kay.context().close();
  await lee.context().close();
});
