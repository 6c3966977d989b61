// A server that swaps a peer's key (no rotation signed by the old key) is
// caught: the page shows an unmissable warning, refuses to encrypt for that
// peer, and only the user's explicit acceptance lifts it.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { acceptRequest, launchBrowser, message, openConversation, openPage, registerInPage, screenshot, sendText, ownServer, vector } from "./harness.mjs";

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

/** The operator replaces `user`'s current key with another, as tests/it/e2e.rs does. */
function swapKey(db, user, spkiB64, fingerprintHex) {
  const script = [
    "import base64, sqlite3, sys",
    "db = sqlite3.connect(sys.argv[1])",
    "db.execute(\"UPDATE user_keys SET public_key = ?, fingerprint = ? WHERE replaced_at IS NULL AND user_id = (SELECT id FROM users WHERE username = ?)\", (base64.b64decode(sys.argv[2]), sys.argv[3], sys.argv[4]))",
    "db.commit()",
    "assert db.total_changes == 1, db.total_changes",
  ].join("\n");
  const r = spawnSync("python3", ["-c", script, db, spkiB64, fingerprintHex, user], { encoding: "utf8" });
  assert.equal(r.status, 0, `swapping the key failed: ${r.stderr}`);
}

test("a key changed without a valid rotation shows the warning and blocks sending until accepted", async (t) => {
  const server = await ownServer(t);
  const gus = await openPage(browser, server);
  const hal = await openPage(browser, server);
  await registerInPage(gus, "gus");
  await registerInPage(hal, "hal");
  await gus.getByLabel("Direct message").fill("hal");
  await gus.getByRole("button", { name: "Open" }).click();
  await sendText(gus, "first contact pins hal's key");
  // They share no room: hal sees a request first (§21).
  await acceptRequest(hal, "gus");
  await message(hal, "first contact pins hal's key").waitFor();
  await sendText(hal, "signed with hal's real key");
  await message(gus, "signed with hal's real key").waitFor();
  assert.equal(await gus.locator(".key-warning").count(), 0);

  const mallory = vector("fingerprint").cases.find((c) => c.fixture === "mallory");
  swapKey(server.db, "hal", mallory.spki_der_b64, mallory.fingerprint_hex);

  // The next time gus's page looks hal up (here: a reload), the pin catches it.
  await gus.reload();
  const warning = gus.locator(".key-warnings .key-warning[data-user=hal]");
  await warning.waitFor();
  assert.match(await warning.textContent(), /hal's key has changed/);
  assert.match(await warning.textContent(), /NOT signed by their previous key/);
  assert.equal(await warning.getAttribute("role"), "alert");
  await gus.locator(".room-button").first().click();
  await message(gus, "signed with hal's real key").waitFor();
  await screenshot(gus, "10-key-change-warning");

  // Nothing is encrypted for the swapped key.
  await sendText(gus, "must not reach mallory");
  const failed = gus.locator("#timeline li.pending.failed", { hasText: "must not reach mallory" });
  await failed.waitFor();
  assert.match(await failed.textContent(), /key changed without a valid rotation/);
  // A failed message can be dismissed or tried again (below, once the key is accepted).
  await sendText(gus, "dismiss me");
  const dismissed = gus.locator("#timeline li.pending.failed", { hasText: "dismiss me" });
  await dismissed.getByRole("button", { name: "Dismiss" }).click();
  await dismissed.waitFor({ state: "detached" });

  // gus compares and explicitly accepts: the warning goes, sending works.
  await warning.getByRole("button", { name: "Compare keys with hal" }).click();
  await gus.getByText("New, unlinked key on offer").waitFor();
  await screenshot(gus, "11-key-change-compare");
  await gus.getByRole("button", { name: "I compared it with hal: accept the new key" }).click();
  await gus.getByText("New, unlinked key on offer").waitFor({ state: "detached" });
  await gus.keyboard.press("Escape");
  await gus.locator("#security-dialog").waitFor({ state: "hidden" });
  await warning.waitFor({ state: "detached" });
  await sendText(gus, "sent after accepting");
  await message(gus, "sent after accepting").waitFor();
  await failed.getByRole("button", { name: "Try again" }).click();
  await message(gus, "must not reach mallory").waitFor();
  await failed.waitFor({ state: "detached" });
  assert.deepEqual(gus.errors, []);
  await gus.context().close();
  await hal.context().close();
});
