// The browser client and the command-line client (the real `hush` binary)
// read each other: text and an image both ways, in a DM and a group room;
// and a key exported by `hush keys export` works in the page, whose own
// download imports back into the command-line key store.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { deflateSync } from "node:zlib";
import {
  connected, hush, launchBrowser, message, openConversation, openPage, registerInPage, removeDir, screenshot, sendText, ownServer, shownTexts,
  tempDir,
} from "./harness.mjs";

let browser;
let work;
before(async () => {
  browser = await launchBrowser();
  work = tempDir("cli");
});
after(async () => {
  await browser?.close();
  removeDir(work);
});

/** A real PNG of `size`×`size` pixels in one colour. */
function png(size, [r, g, b]) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (bytes) => {
    let c = 0xffffffff;
    for (const byte of bytes) c = crcTable[(c ^ byte) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const out = Buffer.alloc(12 + data.length);
    out.writeUInt32BE(data.length, 0);
    out.write(type, 4, "ascii");
    data.copy(out, 8);
    out.writeUInt32BE(crc(out.subarray(4, 8 + data.length)), 8 + data.length);
    return out;
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(size, 0);
  header.writeUInt32BE(size, 4);
  header[8] = 8; // bit depth
  header[9] = 2; // RGB
  const row = Buffer.concat([Buffer.from([0]), Buffer.from(Array.from({ length: size }, () => [r, g, b]).flat())]);
  const pixels = deflateSync(Buffer.concat(Array.from({ length: size }, () => row)));
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk("IHDR", header), chunk("IDAT", pixels), chunk("IEND", Buffer.alloc(0))]);
}

/** `hush read --json` lines for `user`'s conversation. */
function readJson(server, keys, user, where, saveDir) {
  return hush(server, keys, user, ["read", ...where, "--json", "--save-dir", saveDir])
    .trim().split("\n").filter(Boolean).map((line) => JSON.parse(line));
}

/** An image the page shows inline: its decoded width and the bytes its download link gives. */
async function shownImage(page, name) {
  const figure = page.locator("#timeline li.msg figure", { has: page.locator(`img.inline-image[alt="${name}"]`) });
  await figure.waitFor();
  const width = await figure.locator("img").evaluate(async (img) => {
    await img.decode();
    return img.naturalWidth;
  });
  const [download] = await Promise.all([page.waitForEvent("download"), figure.getByRole("link", { name: /^Download / }).click()]);
  const path = join(work, `downloaded-${name}`);
  await download.saveAs(path);
  return { bytes: readFileSync(path), width };
}

test("a browser user and a command-line user exchange text and images both ways", async (t) => {
  const server = await ownServer(t);
  const keys = join(work, "keys");
  hush(server, keys, "carl", ["keys", "new", "carl", "--bits", "2048"]);
  hush(server, keys, "carl", ["register"]);
  const bea = await openPage(browser, server);
  await registerInPage(bea, "bea");

  // Browser -> CLI, in a DM the browser opens.
  await bea.getByLabel("Direct message").fill("carl");
  await bea.getByRole("button", { name: "Open" }).click();
  await bea.locator("#room-title").filter({ hasText: "@carl" }).waitFor();
  await sendText(bea, "hello carl, from the browser");
  const green = png(96, [40, 160, 90]);
  await bea.locator("#file-input").setInputFiles({ name: "green.png", mimeType: "image/png", buffer: green });
  await shownImage(bea, "green.png");
  const saved = join(work, "carl-downloads");
  // They share no room: the DM is a message request for carl (§21), of
  // which the terminal shows who asks and nothing else until he accepts.
  // (By the room's id: `--with bea` would open the DM from carl's side, which accepts it.)
  const dmId = await bea.locator(".room-button.active").getAttribute("data-room");
  const asked = readJson(server, keys, "carl", ["--room", dmId], saved);
  assert.deepEqual(asked.map((l) => [l.kind, l.by]), [["request", "bea"]], JSON.stringify(asked));
  hush(server, keys, "carl", ["accept", "@bea"]);
  const carlSees = readJson(server, keys, "carl", ["--with", "bea"], saved);
  const text = carlSees.filter((l) => l.kind === "message" && l.text);
  assert.deepEqual(text.map((l) => [l.sender, l.text]), [["bea", "hello carl, from the browser"]]);
  const files = carlSees.filter((l) => l.kind === "message" && l.file);
  assert.equal(files.length, 1);
  assert.equal(files[0].file.mime, "image/png");
  assert.equal(files[0].file.name, "green.png");
  assert.ok(readFileSync(files[0].file.saved_to).equals(green), "the CLI saved the exact image bytes");
  assert.deepEqual(carlSees.filter((l) => l.kind === "rejected"), []);

  // CLI -> browser: text and an image file.
  hush(server, keys, "carl", ["send", "--to", "bea", "hello bea, from the terminal"]);
  const red = png(128, [200, 30, 30]);
  const redPath = join(work, "red.png");
  writeFileSync(redPath, red);
  hush(server, keys, "carl", ["send", "--to", "bea", "--file", redPath]);
  await message(bea, "hello bea, from the terminal").waitFor();
  const shown = await shownImage(bea, "red.png");
  assert.ok(shown.bytes.equals(red), "the page shows the exact image bytes");
  assert.equal(shown.width, 128, "the image decodes in the page");
  assert.equal(await bea.locator("#timeline li.msg.rejected").count(), 0);
  await screenshot(bea, "07-browser-and-cli");

  // A group room made on the command line: bea joins in the page.
  hush(server, keys, "carl", ["room", "create", "workshop"]);
  hush(server, keys, "carl", ["room", "invite", "workshop", "bea"]);
  await bea.getByRole("button", { name: "Join workshop" }).click();
  await bea.locator("#room-title").filter({ hasText: "workshop" }).waitFor();
  hush(server, keys, "carl", ["send", "--room", "workshop", "welcome to the workshop"]);
  await message(bea, "welcome to the workshop").waitFor();
  await sendText(bea, "glad to be here");
  await message(bea, "glad to be here").waitFor();
  const room = readJson(server, keys, "carl", ["--room", "workshop"], saved).filter((l) => l.kind === "message");
  assert.deepEqual(room.map((l) => [l.sender, l.text]), [["carl", "welcome to the workshop"], ["bea", "glad to be here"]]);
  assert.deepEqual(bea.errors, []);
  await bea.context().close();
});

test("a key exported by the command line works in the page, and the page's backup imports back", async (t) => {
  const server = await ownServer(t);
  const keys = join(work, "dora-keys");
  hush(server, keys, "dora", ["keys", "new", "dora", "--bits", "2048"]);
  const exported = join(work, "dora-export.json");
  hush(server, keys, "dora", ["keys", "export", "dora", exported]);
  const fingerprint = hush(server, keys, "dora", ["keys", "show", "dora"]).match(/fingerprint:\s*([0-9a-f ]+)/)[1].replace(/ /g, "");

  const dora = await openPage(browser, server);
  await dora.locator("#import-file").setInputFiles(exported);
  await dora.locator("#import-passphrase").fill("passphrase of dora");
  await dora.getByLabel("Also register this key as a new account").check();
  await dora.locator("#import-password").fill("password of dora");
  await dora.getByRole("button", { name: "Import key and log in" }).click();
  await connected(dora);
  await dora.getByRole("button", { name: "My key" }).click();
  assert.equal((await dora.getByTestId("my-fingerprint").textContent()).replace(/ /g, ""), fingerprint);
  await dora.keyboard.press("Escape");

  // The imported key signs in the page; the CLI (with dora's key store) reads it.
  await dora.getByLabel("New room").fill("diary");
  await dora.getByRole("button", { name: "Create", exact: true }).click();
  await sendText(dora, "written in the browser");
  await message(dora, "written in the browser").waitFor();
  const lines = readJson(server, keys, "dora", ["--room", "diary"], join(work, "dora-downloads"));
  assert.deepEqual(lines.filter((l) => l.kind === "message").map((l) => l.text), ["written in the browser"]);

  // The same identity in the page and in the terminal, taking turns: each
  // sends under its own device id, so neither's sender key or counters
  // collide with the other's (issue 14: both used to pick "highest epoch + 1").
  hush(server, keys, "dora", ["send", "--room", "diary", "written in the terminal"]);
  await message(dora, "written in the terminal").waitFor();
  await sendText(dora, "the browser again");
  await message(dora, "the browser again").waitFor();
  hush(server, keys, "dora", ["send", "--room", "diary", "the terminal again"]);
  await message(dora, "the terminal again").waitFor();
  const both = ["written in the browser", "written in the terminal", "the browser again", "the terminal again"];
  assert.deepEqual(await shownTexts(dora), both);
  assert.equal(await dora.locator("#timeline li.rejected").count(), 0);
  const again = readJson(server, keys, "dora", ["--room", "diary"], join(work, "dora-downloads"));
  assert.deepEqual(again.filter((l) => l.kind === "message").map((l) => l.text), both);
  assert.deepEqual(again.filter((l) => l.kind === "rejected"), []);
  const devices = new Set(again.filter((l) => l.kind === "message").map((l) => l.device));
  assert.equal(devices.size, 2, `one device for the page, one for the terminal: ${[...devices]}`);
  // Each client lists both devices, and knows which one is its own.
  await dora.getByRole("button", { name: "Your devices" }).click();
  const rows = dora.locator("#devices-body tr");
  await rows.nth(1).waitFor();
  const pageDevice = (await rows.filter({ hasText: "this tab" }).locator("td").first().textContent()).trim();
  const pageRows = (await rows.allTextContents()).map((r) => r.slice(0, 8));
  await dora.keyboard.press("Escape");
  assert.deepEqual(pageRows.sort(), [...devices].sort(), "the page lists the devices the terminal saw");
  const listed = hush(server, keys, "dora", ["keys", "devices"]);
  assert.match(listed, new RegExp(`${pageDevice}  last sent [^(\n]*\n`), `the terminal lists the page's device, not as its own:\n${listed}`);
  assert.match(listed, /\(this key store/);

  // The page's download is a `hush keys export` bundle the CLI imports.
  const [download] = await Promise.all([dora.waitForEvent("download"), dora.getByRole("button", { name: "Download key backup" }).click()]);
  const backup = join(work, "dora-backup.json");
  await download.saveAs(backup);
  const fresh = join(work, "fresh-keys");
  hush(server, fresh, "dora", ["keys", "import", backup]);
  assert.match(hush(server, fresh, "dora", ["keys", "show", "dora"]).replace(/ /g, ""), new RegExp(fingerprint));
  assert.ok(!readFileSync(backup, "utf8").includes("PRIVATE KEY"), "the backup holds no clear private key");
  assert.deepEqual(dora.errors, []);
  await dora.context().close();
});
