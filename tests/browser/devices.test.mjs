// One person on three clients at once — two `hush chat` terminals with an
// imported key and a browser page — all sending into one room at the same
// time: every message is readable by a third member, in the terminal and in
// the browser (issue 14: clients of one identity used to pick the same
// sender-key epoch and make each other's messages unreadable).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import {
  HUSH, connected, hush, launchBrowser, message, openConversation, openPage, ownServer, removeDir, sendText,
  tempDir,
} from "./harness.mjs";

let browser;
let work;
before(async () => {
  browser = await launchBrowser();
  work = tempDir("devices");
});
after(async () => {
  await browser?.close();
  removeDir(work);
});

/** Opens a page logged in with a key file from `hush keys export`. */
async function pageWithKey(server, user, exported) {
  const page = await openPage(browser, server);
  await page.locator("#import-file").setInputFiles(exported);
  await page.locator("#import-passphrase").fill(`passphrase of ${user}`);
  await page.locator("#import-password").fill(`password of ${user}`);
  await page.getByRole("button", { name: "Import key and log in" }).click();
  await connected(page);
  return page;
}

/** `hush chat` as `user`, typing `lines` then ending its input; resolves when it exits. */
function chatTyping(server, keys, user, lines) {
  return new Promise((resolve, reject) => {
    const child = spawn(HUSH, ["chat"], {
      env: {
        ...process.env,
        HUSH_SERVER: server.url,
        HUSH_KEYS: keys,
        HUSH_USER: user,
        HUSH_PASSPHRASE: `passphrase of ${user}`,
        HUSH_PASSWORD: `password of ${user}`,
      },
      stdio: ["pipe", "pipe", "pipe"],
    });
    let output = "";
    child.stdout.on("data", (d) => { output += d; });
    child.stderr.on("data", (d) => { output += d; });
    const timer = setTimeout(() => child.kill("SIGKILL"), 120_000);
    child.on("exit", (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(output);
      else reject(new Error(`hush chat exited ${code}:\n${output}`));
    });
    child.stdin.end(lines.map((l) => `${l}\n`).join(""));
  });
}

test("two terminals and a page of one identity send into one room at once, and a third member reads it all", async (t) => {
  const server = await ownServer(t);
  const [desk, laptop, frankKeys] = [join(work, "desk"), join(work, "laptop"), join(work, "frank")];
  for (const [keys, user] of [[desk, "erin"], [frankKeys, "frank"]]) {
    hush(server, keys, user, ["keys", "new", user, "--bits", "2048"]);
    hush(server, keys, user, ["register"]);
  }
  const erinKey = join(work, "erin.export");
  const frankKey = join(work, "frank.export");
  hush(server, desk, "erin", ["keys", "export", "erin", erinKey]);
  hush(server, frankKeys, "frank", ["keys", "export", "frank", frankKey]);
  hush(server, laptop, "erin", ["keys", "import", erinKey]);
  hush(server, desk, "erin", ["room", "create", "all"]);
  hush(server, desk, "erin", ["room", "invite", "all", "frank"]);
  hush(server, frankKeys, "frank", ["room", "join", "all"]);

  const erin = await pageWithKey(server, "erin", erinKey);
  const frank = await pageWithKey(server, "frank", frankKey);
  await openConversation(erin, "all");
  await openConversation(frank, "all");

  const EACH = 8;
  const lines = (label) => Array.from({ length: EACH }, (_, i) => `${label} ${i}`);
  const typing = [chatTyping(server, desk, "erin", lines("desk")), chatTyping(server, laptop, "erin", lines("laptop"))];
  for (const text of lines("page")) await sendText(erin, text);
  await Promise.all(typing);
  for (const text of lines("page")) await message(erin, text).waitFor({ timeout: 60_000 });

  const everything = ["desk", "laptop", "page"].flatMap(lines).sort();
  const read = hush(server, frankKeys, "frank", ["read", "--room", "all", "--json"])
    .trim().split("\n").map((l) => JSON.parse(l));
  assert.deepEqual(read.filter((l) => l.kind === "rejected"), [], "the terminal rejects nothing");
  const fromErin = read.filter((l) => l.kind === "message" && l.sender === "erin");
  assert.deepEqual(fromErin.map((l) => l.text).sort(), everything, "the terminal reads every message once");
  assert.equal(new Set(fromErin.map((l) => l.device)).size, 3, "three devices sent");

  for (const text of everything) await message(frank, text).waitFor({ timeout: 60_000 });
  assert.equal(await frank.locator("#timeline li.rejected").count(), 0, "the page rejects nothing");
  assert.deepEqual(frank.errors, []);
  assert.deepEqual(erin.errors, []);
  await erin.context().close();
  await frank.context().close();
});
