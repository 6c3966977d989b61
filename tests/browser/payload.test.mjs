// What the page makes of genuine envelopes it cannot fully display, and of
// ones it must refuse (PROTOCOL.md §19, Plaintext payload and the replay
// rule). A bare protocol client, signing with a fixture key, posts bodies
// no hush client writes: a payload type nobody knows, a newer payload
// version, a newer body format, unknown members, duplicate member names, a
// file name that is a path, a replay and a message stored after a later one.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { launchBrowser, message, openPage, ownServer, registerInPage, screenshot, connected, openConversation } from "./harness.mjs";
import { RawUser, c, fixtureIdentity } from "./raw.mjs";

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

const utf8 = (text) => new TextEncoder().encode(text);

test("unknown payloads show 'update hush', not 'rejected'; duplicates and replays are rejected; late ones are marked", async (t) => {
  const server = await ownServer(t);
  const mia = await openPage(browser, server);
  await registerInPage(mia, "mia");
  const carol = await fixtureIdentity("carol");
  const rex = await RawUser.register(server, "rex", carol);
  const wire = await openPage(browser, server); // a page of the origin, for the raw WebSocket

  await mia.getByLabel("New room").fill("lab");
  await mia.getByRole("button", { name: "Create", exact: true }).click();
  await mia.locator("#room-title").filter({ hasText: "lab" }).waitFor();
  await mia.getByLabel("Invite someone").fill("rex");
  await mia.getByRole("button", { name: "Invite", exact: true }).click();
  await mia.locator("#timeline .event", { hasText: "mia invited rex" }).waitFor();
  const room = (await rex.api("GET", "/invitations"))[0].room;
  await rex.api("POST", `/rooms/${room}/join`);
  await mia.locator("#timeline .event", { hasText: "rex joined" }).waitFor();

  // rex's own chain: a version-2 distribution to rex and mia, then envelopes.
  const device = c.newDeviceId();
  const key = await c.senderKey(1, c.randomBytes(32));
  const recipients = [{ username: "rex", identity: carol.public }, { username: "mia", identity: await rex.publicKeyOf("mia") }];
  const distribution = await c.sealDistribution(room, "rex", device, key, recipients, carol);
  const seal = (counter, json) => c.sealEnvelopeRaw({ roomId: room, sender: "rex", device, key, counter: BigInt(counter), plaintext: utf8(json), signer: carol });
  const hello = await seal(2, '{"v":1,"t":"text","text":"plain hello","reply_to":3}');
  const newerFormat = Uint8Array.from(hello);
  newerFormat[4] = 3;
  const bodies = [
    distribution,
    await seal(0, '{"v":1,"t":"poll","q":"lunch?","options":["soup","salad"]}'),
    await seal(1, '{"v":2,"t":"text","text":"from the future"}'),
    hello,
    await seal(3, '{"v":1,"t":"text","text":"first reading","text":"second reading"}'),
    await seal(4, `{"v":1,"t":"file","name":"../../evil\\u0007name.txt","mime":"text/plain","data":"aGk="}`),
    newerFormat,
    await seal(8, '{"v":1,"t":"text","text":"counter eight"}'),
  ];
  const { replies } = await rex.exchange(wire, { sends: bodies.map((body) => ({ room, body })) });
  assert.deepEqual(replies.map((r) => r.type), bodies.map(() => "ack"), JSON.stringify(replies));
  await message(mia, "counter eight").waitFor();

  // The page reloads and resumes from its store (replay sets included):
  // what comes next is judged as a reading from the start would judge it.
  await mia.reload();
  await connected(mia);
  await openConversation(mia, "lab");
  const later = [
    hello, // the same envelope again: a replay
    await seal(7, '{"v":1,"t":"text","text":"counter seven, stored after eight"}'),
  ];
  const { replies: laterReplies } = await rex.exchange(wire, { sends: later.map((body) => ({ room, body })) });
  assert.deepEqual(laterReplies.map((r) => r.type), later.map(() => "ack"), JSON.stringify(laterReplies));

  const check = async () => {
    await message(mia, "counter seven").waitFor();
    const unsupported = mia.locator("#timeline li.msg.unsupported");
    assert.equal(await unsupported.count(), 3, "poll, payload v2 and format 3 are genuine but not displayable");
    for (const text of await unsupported.allTextContents()) assert.match(text, /this version of hush cannot (display|read) — update hush/);
    assert.equal(await unsupported.filter({ hasText: "rejected" }).count(), 0);
    await message(mia, "plain hello").waitFor();
    const rejected = mia.locator("#timeline li.rejected");
    assert.equal(await rejected.count(), 2, "duplicate members and the replay");
    assert.match(await rejected.nth(0).textContent(), /it does not decrypt/);
    assert.match(await rejected.nth(1).textContent(), /repeats an earlier message \(replay\)/);
    assert.equal(await mia.locator("#timeline li.msg", { hasText: "second reading" }).count(), 0, "no reading of a duplicate member is shown");
    const link = mia.getByRole("link", { name: /^Download evil_name\.txt/ });
    assert.equal(await link.getAttribute("download"), "evil_name.txt", "the file name is not a path");
    const late = message(mia, "counter seven");
    assert.match(await late.getAttribute("class"), /\blate\b/);
    assert.match(await late.locator(".late").textContent(), /delivered late/);
    assert.doesNotMatch(await message(mia, "counter eight").getAttribute("class"), /\blate\b/);
  };
  await check();
  await screenshot(mia, "16-unsupported-rejected-late");
  // The same verdicts after a reload (from the store), and when the log is
  // read again from the start (the store deleted).
  await mia.reload();
  await connected(mia);
  await openConversation(mia, "lab");
  await check();
  await mia.evaluate(() => new Promise((resolve, reject) => {
    const request = indexedDB.deleteDatabase("hush-store-mia");
    request.onsuccess = resolve;
    request.onerror = () => reject(request.error);
  }));
  await mia.reload();
  await connected(mia);
  await openConversation(mia, "lab");
  await check();
  assert.deepEqual(mia.errors, []);
  await mia.context().close();
  await wire.context().close();
});
