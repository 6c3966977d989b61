// Desktop notifications (web/js/notify.js, wired in app.js): a message that
// arrives while the tab is hidden makes one notification naming the sender
// and the conversation, without the text unless the user ticked "Message
// text in notifications"; a visible tab makes none; the browser's
// permission is asked once (a second send and a reload do not ask again).
//
// Real server, real pages, real messages. The browser is instrumented, not
// our code: an init script wraps `window.Notification` (the real one is still
// constructed) to record each notification and each `requestPermission`
// call. Headless Chromium keeps every tab visible whatever is done to it
// (another tab in front, a minimized window, CDP focus emulation or
// lifecycle states all leave `document.visibilityState` at "visible"), so the
// same script lets the test turn the document's visibility to "hidden" and
// back, firing `visibilitychange` as a browser does when the user switches
// tabs.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { connected, launchBrowser, message, openPage, ownServer, registerInPage, roomWith, sendText } from "./harness.mjs";

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

function instrumentBrowser() {
  window.__notes = [];
  // Permission requests are counted in sessionStorage: a reload of the tab keeps the count.
  const asks = () => Number(sessionStorage.getItem("__asks") ?? 0);
  window.__asks = asks;
  const Real = window.Notification;
  if (typeof Real === "function") {
    class Recorded extends Real {
      constructor(title, options = {}) {
        super(title, options);
        window.__notes.push({ title: String(title), body: String(options.body ?? "") });
      }
    }
    const ask = Real.requestPermission.bind(Real);
    Recorded.requestPermission = (...args) => {
      sessionStorage.setItem("__asks", String(asks() + 1));
      return ask(...args);
    };
    window.Notification = Recorded;
  }
  // The tab's visibility, as switching tabs changes it.
  let hidden = null;
  const proto = Document.prototype;
  const real = {
    hidden: Object.getOwnPropertyDescriptor(proto, "hidden").get,
    visibilityState: Object.getOwnPropertyDescriptor(proto, "visibilityState").get,
  };
  Object.defineProperty(proto, "hidden", { configurable: true, get() { return hidden ?? real.hidden.call(this); } });
  Object.defineProperty(proto, "visibilityState", {
    configurable: true,
    get() { return hidden === null ? real.visibilityState.call(this) : hidden ? "hidden" : "visible"; },
  });
  window.__setHidden = (value) => {
    hidden = value;
    document.dispatchEvent(new Event("visibilitychange"));
  };
}

const notes = (page) => page.evaluate(() => window.__notes);
const asks = (page) => page.evaluate(() => window.__asks());
const setHidden = (page, value) => page.evaluate((v) => window.__setHidden(v), value);

test("a message to a hidden tab makes one notification, without its text unless opted in; none while visible; permission asked once", async (t) => {
  const server = await ownServer(t);
  const origin = server.url;
  const ann = await openPage(browser, server);
  const bob = await openPage(browser, server);
  await ann.context().addInitScript(instrumentBrowser);
  await ann.reload();
  await registerInPage(ann, "ann");
  await registerInPage(bob, "bob");
  assert.equal(await ann.evaluate(() => Notification.permission), "default");
  await roomWith(ann, "plans", { bob });

  // (4) The first send asks for the permission (headless Chromium denies it).
  await sendText(ann, "first from ann");
  await message(ann, "first from ann").waitFor();
  assert.equal(await asks(ann), 1, "the first send asks for the permission");
  // Back to "ask" (as if the user had dismissed the prompt): only the page's
  // own memory keeps it from asking again.
  await ann.context().clearPermissions();
  assert.equal(await ann.evaluate(() => Notification.permission), "default");
  await sendText(ann, "second from ann");
  await message(ann, "second from ann").waitFor();
  assert.equal(await asks(ann), 1, "a second send does not ask again");
  await ann.reload();
  await connected(ann);
  await message(ann, "second from ann").waitFor();
  await sendText(ann, "third from ann, after a reload");
  await message(ann, "third from ann, after a reload").waitFor();
  assert.equal(await asks(ann), 1, "after a reload the page does not ask again");

  // The user allows notifications for the site.
  await ann.context().grantPermissions(["notifications"], { origin });
  assert.equal(await ann.evaluate(() => Notification.permission), "granted");

  // (1) Hidden tab: one notification naming sender and conversation, no text.
  const stamp = Date.now();
  const secret = `zanzibar${stamp}`;
  await setHidden(ann, true);
  await sendText(bob, `the code word is ${secret}`);
  await message(ann, secret).waitFor();
  await ann.waitForFunction(() => window.__notes.length >= 1, null, { timeout: 10_000 });
  await ann.waitForTimeout(300); // a second notification for the same message would show by now
  let seen = await notes(ann);
  assert.equal(seen.length, 1, `one notification: ${JSON.stringify(seen)}`);
  assert.match(seen[0].title, /plans/, "the title names the conversation");
  assert.match(`${seen[0].title} ${seen[0].body}`, /\bbob\b/, "the notification names the sender");
  assert.ok(!`${seen[0].title} ${seen[0].body}`.includes(secret), `no message text: ${JSON.stringify(seen[0])}`);

  // (2) The user opts in to the text, then the next one carries it.
  await setHidden(ann, false);
  const option = ann.getByLabel("Message text in notifications");
  assert.equal(await option.isChecked(), false);
  await option.check();
  await setHidden(ann, true);
  const shown = `pelican${stamp}`;
  await sendText(bob, `now you may read ${shown}`);
  await message(ann, shown).waitFor();
  await ann.waitForFunction(() => window.__notes.length >= 2, null, { timeout: 10_000 });
  seen = await notes(ann);
  assert.equal(seen.length, 2, `one more notification: ${JSON.stringify(seen)}`);
  assert.match(seen[1].title, /plans/);
  assert.match(seen[1].body, /\bbob\b/);
  assert.ok(seen[1].body.includes(shown), `the opted-in notification carries the text: ${JSON.stringify(seen[1])}`);

  // (3) A visible tab: the message shows, no notification.
  await setHidden(ann, false);
  const visible = `walrus${stamp}`;
  await sendText(bob, `while you look: ${visible}`);
  await message(ann, visible).waitFor();
  await ann.waitForTimeout(500);
  seen = await notes(ann);
  assert.equal(seen.length, 2, `no notification while the tab is visible: ${JSON.stringify(seen)}`);

  // The choice stays across a reload, and still nothing asks again.
  await ann.reload();
  await connected(ann);
  assert.equal(await ann.getByLabel("Message text in notifications").isChecked(), true, "the opt-in is remembered");
  assert.equal(await asks(ann), 1);
  assert.deepEqual([...ann.errors, ...bob.errors], []);
  await ann.context().close();
  await bob.context().close();
});
