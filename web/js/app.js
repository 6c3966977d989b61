// The page: sign-up, log-in and key import, then the chat UI over a
// HushClient. Every piece of text that comes from the network is put into
// the page with textContent (never as HTML). Nothing leaves the page but
// the protocol's frames and requests.

import { Api, ApiError } from "./api.js";
import { b64decode, b64encode } from "./bytes.js";
import * as c from "./crypto.js";
import { HushClient, expire } from "./client.js";
import { claimDevice, devicePool } from "./devices.js";
import { Directory } from "./directory.js";
import * as idb from "./idb.js";
import { Notifier, titleWithUnread } from "./notify.js";
import { Store } from "./store.js";
import { Timeline } from "./timeline.js";
import { durationText, shortFingerprint } from "./conversation.js";

const $ = (id) => document.getElementById(id);
const IMAGE_TYPES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp"]);

/** Builds an element; string children become text nodes. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) if (child !== null && child !== undefined) node.append(child);
  return node;
}

let client = null;
let api = new Api();
let activeRoom = null;
let identityRecord = null;
let store = null;
let notifier = null;
const blobUrls = new Map(); // `${room}:${seq}` -> object URL
const WINDOW = 100; // messages shown when a conversation opens
const timeline = new Timeline($("timeline"), {
  render: (item) => renderItem(client.rooms.get(activeRoom), item),
  load: (direction, seq, limit) => client.itemsOf(activeRoom, direction, seq, limit),
});

// ------------------------------------------------------------ errors in words

/**
 * What went wrong, in words a person understands, for the form that
 * asked: the server's codes are the same for "no such user" and "no such
 * room" (on purpose), but the form knows which one it asked about.
 */
function explain(e, { user, action } = {}) {
  if (!(e instanceof ApiError)) return e.message ?? String(e);
  switch (e.code) {
    case "network": return "The server cannot be reached. Check your connection and try again.";
    case "not_found": return user ? `There is no user named ${user}.` : "That conversation is gone, or you are no longer in it.";
    case "invalid_credentials": return "Wrong username or password.";
    case "username_taken": return `The name ${user} is taken: choose another.`;
    case "username_confusable": return `The name ${user} looks too much like an existing one: choose another.`;
    case "invalid_username": return "A username is 3 to 32 of a–z, 0–9, _ . - and starts with a letter or digit.";
    case "weak_password": return "The account password must be at least 8 characters.";
    case "conflict": return user ? `${user} is already in this room or already invited.` : `That cannot be done now (${e.message}).`;
    case "forbidden": return `You are not allowed to ${action ?? "do that"} here.`;
    case "rate_limited": return "Too many attempts: wait a minute, then try again.";
    case "busy": return "The server is busy: try again in a few seconds.";
    case "unauthorized": return "Your session has ended: log in again.";
    default: return e.message;
  }
}

/** Shows `message` under `form` (role=alert), or clears it. */
function formError(form, message) {
  let line = form.querySelector(":scope .form-error");
  if (!line) {
    line = el("p", { class: "form-error", role: "alert" });
    form.append(line);
  }
  line.textContent = message ?? "";
  line.hidden = !message;
}

// ------------------------------------------------------------ identities

/** {username, current, previous, keyWith(fpHex)} from the stored record. */
async function openIdentity(record) {
  const load = (k) => c.restoredIdentity(k.spki, k.signKey, k.unwrapKey);
  const current = await load(record.current);
  const previous = await Promise.all(record.previous.map(load));
  const all = [current, ...previous];
  return { username: record.username, current, previous, keyWith: (fpHex) => all.find((k) => k.public.fpHex === fpHex) ?? null };
}

const keyRecord = (priv) => ({ spki: priv.public.spki, signKey: priv.signKey, unwrapKey: priv.unwrapKey });

async function storeIdentity(username, current, previous, bundle) {
  const record = { username, current: keyRecord(current), previous: previous.map(keyRecord), bundle };
  await idb.put(`identity:${username}`, record);
  return record;
}

// ------------------------------------------------------------ welcome forms

function status(text) {
  $("welcome-status").textContent = text;
}

async function busy(form, work, context = () => ({})) {
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  formError(form, null);
  try {
    await work();
  } catch (e) {
    status("");
    formError(form, explain(e, context()));
  } finally {
    button.disabled = false;
  }
}

async function register(username, password, priv) {
  const { challenge } = await api.challenge();
  const signature = await c.sign(priv, c.registrationProof(username, b64decode(challenge)));
  await api.register({ username, password, public_key: b64encode(priv.public.spki), challenge, signature: b64encode(signature) });
}

$("register-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.target;
  busy(form, async () => {
    const username = $("reg-username").value.trim();
    const password = $("reg-password").value;
    const passphrase = $("reg-passphrase").value;
    if (passphrase !== $("reg-passphrase2").value) throw new Error("The two key passphrases differ: type the same one twice.");
    if (!c.KEY_BITS.includes(Number($("reg-bits").value))) throw new Error("Pick a key size.");
    status("Making your key pair…");
    const pair = await c.generateKeyPair(Number($("reg-bits").value));
    status("Sealing the key backup with your passphrase…");
    const keyFile = await c.sealKeyFile(pair.pkcs8, pair.spki, passphrase);
    const priv = await c.privateIdentity(pair.pkcs8, pair.spki);
    pair.pkcs8.fill(0);
    status("Registering…");
    await register(username, password, priv);
    await storeIdentity(username, priv, [], JSON.stringify(c.exportBundle(username, keyFile), null, 2));
    // Until the backup is downloaded, the key lives only in this browser.
    await idb.put(`backup-due:${username}`, true);
    await logIn(username, password);
  }, () => ({ user: $("reg-username").value.trim() }));
});

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  busy(event.target, () => logIn($("login-username").value.trim().toLowerCase(), $("login-password").value),
    () => ({ user: $("login-username").value.trim().toLowerCase() }));
});

$("import-form").addEventListener("submit", (event) => {
  event.preventDefault();
  busy(event.target, async () => {
    const file = $("import-file").files[0];
    if (!file) throw new Error("choose a key file");
    const bundle = c.parseBundle(await file.text());
    status(`Opening ${bundle.username}'s keys…`);
    const passphrase = $("import-passphrase").value;
    const current = await c.openKeyFile(bundle.current, passphrase);
    const previous = [];
    for (const old of bundle.previous) previous.push(await c.openKeyFile(old, passphrase));
    if ($("import-register").checked) {
      status("Registering…");
      await register(bundle.username, $("import-password").value, current);
    }
    await storeIdentity(bundle.username, current, previous, JSON.stringify(c.exportBundle(bundle.username, bundle.current, bundle.previous), null, 2));
    await logIn(bundle.username, $("import-password").value);
  }, () => ({ user: null }));
});

async function logIn(username, password) {
  const record = await idb.get(`identity:${username}`);
  if (!record) throw new Error(`This browser has no key for ${username}. Import your key file first.`);
  status("Logging in…");
  const session = await api.login(username, password);
  await idb.put("session", { username: session.username, token: session.token, expires_at: session.expires_at });
  await enter(session.username, session.token, record);
}

// ------------------------------------------------------------ signed in

async function enter(username, token, record) {
  identityRecord = record;
  api = new Api(token);
  const identity = await openIdentity(record);
  const trust = await idb.get(`trust:${username}`);
  const directory = new Directory(api, trust, (t) => idb.put(`trust:${username}`, t), identity);
  const device = await claimDevice(username);
  try {
    store = await Store.open(username);
  } catch (e) {
    store = null;
    showProblem(`This browser cannot keep messages (${e.message}): every visit reads them from the server again.`);
  }
  notifier = new Notifier(username);
  $("notify-text").checked = notifier.showText;
  client = new HushClient({ api, token, identity, directory, device, store });
  client.addEventListener("rooms", renderRooms);
  client.addEventListener("entries", (e) => onEntries(e.detail));
  client.addEventListener("pending", () => {
    renderPending();
    renderConnection();
  });
  client.addEventListener("connection", renderConnection);
  client.addEventListener("presence", renderPresence);
  client.addEventListener("invitations", renderInvitations);
  client.addEventListener("key-notice", (e) => onKeyNotice(e.detail));
  client.addEventListener("synced", (e) => e.detail.roomId === activeRoom && client.markRead(activeRoom));
  client.addEventListener("problem", (e) => showProblem(e.detail.message));
  client.addEventListener("updated", (e) => onUpdated(e.detail));
  client.addEventListener("receipts", (e) => e.detail.roomId === activeRoom && renderSeenBy());
  client.addEventListener("typing", (e) => e.detail.roomId === activeRoom && renderTyping());
  client.addEventListener("blocks", () => { renderBlocked(); renderRequests(); });
  client.settings = await loadSettings(username);
  $("send-read-receipts").checked = client.settings.readReceipts;
  $("send-typing").checked = client.settings.typing;
  client.addEventListener("signed-out", () => signOut(false));
  $("me").textContent = username;
  await client.start();
  $("welcome").hidden = true;
  $("app").hidden = false;
  status("");
  renderBackupDue();
  // Back where the user was: the conversation open last, from the store,
  // before the network answers.
  const last = await store?.getMeta("lastRoom").catch(() => null);
  if (last !== undefined && last !== null && client.rooms.has(last) && activeRoom === null) await openRoom(last, { focus: false });
  await client.connect();
  renderKeyWarnings();
}

async function signOut(tellServer = true) {
  if (tellServer) await api.logout().catch(() => {});
  client?.stop();
  const user = client?.me;
  client = null;
  api = new Api();
  activeRoom = null;
  await idb.del("session");
  // Signing out forgets this browser's copy of the messages (the server
  // keeps the log; the next log-in reads it again). The key stays.
  store?.close();
  store = null;
  if (user && tellServer) await Store.destroy(user);
  document.title = titleWithUnread(0);
  keyNotices.clear();
  for (const url of blobUrls.values()) URL.revokeObjectURL(url);
  blobUrls.clear();
  timeline.clear();
  $("app").hidden = true;
  $("welcome").hidden = false;
  $("room-view").hidden = true;
  $("empty-state").hidden = false;
}

function showProblem(message) {
  const p = $("problem");
  p.textContent = message;
  p.hidden = false;
  clearTimeout(showProblem.timer);
  showProblem.timer = setTimeout(() => (p.hidden = true), 8000);
}

async function act(work) {
  try {
    await work();
  } catch (e) {
    showProblem(e instanceof ApiError ? `${e.message}` : e.message ?? String(e));
  }
}

function renderConnection() {
  if (!client) return;
  const { state, retryMs } = client.link;
  const waiting = client.waitingCount();
  const labels = {
    connecting: "Connecting…",
    online: "Connected",
    offline: "Offline: reconnecting",
    signed_out: "Signed out",
  };
  const node = $("connection");
  node.dataset.state = state ?? "connecting";
  node.textContent = labels[state] ?? state;
  if (waiting) node.textContent += ` · ${waiting} waiting to send`;
  void retryMs;
}

// ------------------------------------------------------------ room list

/**
 * The room list, updated in place: each room keeps its <li> and <button>
 * (keyed by room id), so a new message, a read mark or a presence change
 * never takes away keyboard focus from a button the user is on.
 */
function renderRooms() {
  if (!client) return;
  renderRequests();
  const rooms = [...client.rooms.values()].filter((r) => !client.isRequest(r)).sort((a, b) => b.lastTs - a.lastTs || a.info.id - b.info.id);
  $("no-rooms").hidden = rooms.length > 0;
  const list = $("room-list");
  const existing = new Map([...list.children].map((li) => [Number(li.dataset.room), li]));
  let total = 0;
  rooms.forEach((room, index) => {
    const id = room.info.id;
    const unread = id === activeRoom && !document.hidden ? 0 : client.unread(room);
    total += unread;
    const name = client.title(room);
    let li = existing.get(id);
    existing.delete(id);
    if (!li) {
      li = el("li", { "data-room": id }, el("button", { type: "button", class: "room-button", "data-room": id, onclick: () => openRoom(id) }));
    }
    const button = li.firstElementChild;
    button.className = `room-button${id === activeRoom ? " active" : ""}`;
    if (id === activeRoom) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
    button.setAttribute("aria-label", `${room.info.kind === "dm" ? "Direct message with" : "Room"} ${name}${unread ? `, ${unread} unread` : ""}`);
    button.replaceChildren(
      el("span", { class: "room-kind", "aria-hidden": "true" }, room.info.kind === "dm" ? "@" : "#"),
      el("span", { class: "room-name" }, name),
      ...(unread ? [el("span", { class: "badge", "aria-hidden": "true" }, String(unread))] : []));
    // Moving the focused node would blur it: only move what is out of place.
    if (list.children[index] !== li) list.insertBefore(li, list.children[index] ?? null);
  });
  for (const li of existing.values()) li.remove();
  document.title = titleWithUnread(total);
  if (activeRoom !== null && (!client.rooms.has(activeRoom) || client.isRequest(client.rooms.get(activeRoom)))) closeRoom();
  if (activeRoom !== null) renderRoomHeader();
}

function renderInvitations() {
  const list = client?.invitations ?? [];
  $("no-invitations").hidden = list.length > 0;
  const ul = $("invitation-list");
  const existing = new Map([...ul.children].map((li) => [Number(li.dataset.room), li]));
  for (const inv of list) {
    if (existing.has(inv.room)) {
      existing.delete(inv.room);
      continue;
    }
    ul.append(el("li", { "data-room": inv.room },
      el("span", {}, `#${inv.name ?? inv.room} from ${inv.invited_by} `),
      el("button", { type: "button", onclick: () => act(async () => {
        const info = await api.join(inv.room);
        await client.enqueue(async () => {
          client.addRoom(info);
          client.sync([client.rooms.get(info.id)]);
        });
        await client.refreshInvitations();
        renderRooms();
        openRoom(info.id);
      }) }, `Join ${inv.name ?? ""}`),
      " ",
      el("button", { type: "button", class: "quiet", onclick: () => act(async () => {
        await api.decline(inv.room);
        await client.refreshInvitations();
      }) }, `Decline ${inv.name ?? ""}`)));
  }
  for (const li of existing.values()) li.remove();
}

function renderPresence() {
  if (!client) return;
  $("online-list").replaceChildren(...[...client.online].sort().map((u) => el("li", { class: "online-user" }, el("span", { class: "dot", "aria-hidden": "true" }), u)));
  if (activeRoom !== null) renderRoomHeader();
}

/** Runs a sidebar or room form's work; a failure is said under that form. */
function formAct(form, work, context = () => ({})) {
  formError(form, null);
  return (async () => {
    try {
      await work();
    } catch (e) {
      formError(form, explain(e, context()));
    }
  })();
}

$("create-room-form").addEventListener("submit", (event) => {
  event.preventDefault();
  formAct(event.target, async () => {
    const info = await api.createRoom($("new-room-name").value);
    $("new-room-name").value = "";
    await client.enqueue(async () => {
      client.addRoom(info);
      client.sync([client.rooms.get(info.id)]);
    });
    renderRooms();
    openRoom(info.id);
  });
});

$("dm-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const user = $("dm-username").value.trim().toLowerCase();
  formAct(event.target, async () => {
    if (user === client.me) throw new Error("That is you: a direct message needs someone else.");
    const info = await api.dm(user);
    $("dm-username").value = "";
    await client.enqueue(async () => {
      if (!client.rooms.has(info.id)) {
        client.addRoom(info);
        client.sync([client.rooms.get(info.id)]);
      }
    });
    renderRooms();
    openRoom(info.id);
  }, () => ({ user }));
});

// ------------------------------------------------------------ conversation

/**
 * Opens a conversation at its newest message, from the store (so at once,
 * and offline too), then remembers it for the next visit.
 */
async function openRoom(id, { focus = true, aroundSeq = null } = {}) {
  activeRoom = id;
  document.body.classList.add("room-open");
  $("empty-state").hidden = true;
  $("room-view").hidden = false;
  formError($("composer"), null);
  if (compose) endCompose();
  renderRoomHeader();
  renderRooms();
  renderTyping();
  for (const url of blobUrls.values()) URL.revokeObjectURL(url);
  blobUrls.clear();
  if (aroundSeq !== null) {
    // A search hit: the messages around it, from the store.
    const half = WINDOW / 2;
    const [older, newer] = await Promise.all([
      client.itemsOf(id, "before", aroundSeq + 1, half), client.itemsOf(id, "after", aroundSeq, half)]);
    if (activeRoom !== id) return;
    timeline.showAround(id, [...older, ...newer], aroundSeq, { hasOlder: older.length >= half, hasNewer: newer.length >= half });
  } else {
    const items = await client.itemsOf(id, "latest", 0, WINDOW);
    if (activeRoom !== id) return;
    const now = Date.now();
    timeline.show(id, items.map((i) => shownNow(i, now)), WINDOW);
    // Entries processed while the store was read are not in it yet.
    timeline.append((client.rooms.get(id)?.unsaved ?? []).map((i) => shownNow(i, now)));
  }
  renderSeenBy();
  renderPending();
  client.markRead(id);
  store?.setMeta("lastRoom", id).catch(() => {});
  if (focus) $("message-input").focus();
}

function closeRoom() {
  activeRoom = null;
  document.body.classList.remove("room-open");
  $("room-view").hidden = true;
  $("empty-state").hidden = false;
  timeline.clear();
  store?.setMeta("lastRoom", null).catch(() => {});
}

$("back-button").addEventListener("click", () => {
  document.body.classList.remove("room-open");
  renderRooms();
});

function renderRoomHeader() {
  const room = client.rooms.get(activeRoom);
  if (!room) return;
  const isDm = room.info.kind === "dm";
  $("room-title").textContent = `${isDm ? "@" : "#"}${client.title(room)}`;
  $("room-members").replaceChildren(...room.info.members.map((m, i) => el("span", { class: client.online.has(m) ? "member online" : "member" },
    i ? ", " : "", m, client.online.has(m) ? " (online)" : "")));
  $("invite-form").hidden = isDm;
  $("leave-room").hidden = isDm;
  const ttl = room.conv.timer.ttl;
  const select = $("timer-select");
  if (![...select.options].some((o) => Number(o.value) === ttl)) select.append(el("option", { value: ttl }, durationText(ttl)));
  if (document.activeElement !== select) select.value = String(ttl);
  if ($("members-dialog").open) renderMembers();
}

const TIME_FORMAT = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const timeOf = (ts) => TIME_FORMAT.format(ts);

/** One timeline item (a message, an event, a rejection) as an <li>. */
function renderItem(room, shown) {
  const own = shown.sender === client.me;
  const meta = (extra) => el("div", { class: "meta" },
    el("span", { class: "sender" }, own ? `${shown.sender} (you)` : shown.sender), " ",
    el("time", { datetime: new Date(shown.ts).toISOString() }, timeOf(shown.ts)), extra);
  if (shown.type === "unsupported") {
    return el("li", { class: `msg unsupported${own ? " own" : ""}`, "data-seq": shown.seq },
      meta(null), el("div", { class: "body" }, el("p", { class: "text notice" }, shown.text)));
  }
  if (shown.type === "event") {
    return el("li", { class: `event${shown.kind === "key" ? " key-event" : ""}`, "data-seq": shown.seq },
      el("time", { datetime: new Date(shown.ts).toISOString() }, timeOf(shown.ts)), " ", shown.text);
  }
  if (shown.type === "rejected") {
    return el("li", { class: `msg rejected${own ? " own" : ""}`, "data-seq": shown.seq },
      meta(null), el("div", { class: "body" }, `⚠ Rejected message: ${shown.reason}. It is not shown because it cannot be trusted.`));
  }
  if (shown.type === "deleted" || shown.type === "erased" || shown.type === "hidden") {
    // A tombstone, a message its sender deleted, or one from a blocked user (§21).
    const kind = shown.type === "hidden" ? "hidden-msg" : shown.type;
    return el("li", { class: `msg ${kind}${own ? " own" : ""}`, "data-seq": shown.seq },
      meta(null), el("div", { class: "body" }, el("p", { class: "text" }, shown.text)));
  }
  const late = shown.isLate
    ? el("span", { class: "late", title: "stored after a later message of the same sender; shown where the log has it" }, " · delivered late")
    : null;
  const edited = shown.edited ? el("span", { class: "edited" }, " (edited)") : null;
  const quote = shown.payload.reply_to ? el("blockquote", { class: "quote", "data-of": shown.payload.reply_to }, "…") : null;
  if (quote) fillQuote(quote, room.info.id, shown.payload.reply_to);
  return el("li", { class: `msg${own ? " own" : ""}${shown.isLate ? " late" : ""}`, "data-seq": shown.seq, tabindex: "-1" },
    meta([shown.verified && !own ? el("span", { class: "verified", title: "verified key" }, " ✓ verified") : null, late, edited]),
    quote,
    el("div", { class: "body" }, renderPayload(room.info.id, shown.seq, shown.payload)),
    renderReactions(shown),
    renderActions(shown, own));
}

// ------------------------------------------------------------ message actions (§21)

const REACTIONS = ["👍", "❤️", "😂", "😮", "😢", "🎉"];
let compose = null; // {mode: "reply"|"edit", seq, sender}

/** Short words for a message, for quotes and the composer's "Replying to …". */
function preview(item) {
  if (!item || item.type !== "message") return null;
  const text = item.payload.t === "text" ? item.payload.text : `📎 ${c.safeFileName(item.payload.name)}`;
  return `${item.sender}: ${text.length > 200 ? `${text.slice(0, 200)}…` : text}`;
}

/** A reply's quote of its target, or "message not available" (§21). */
async function fillQuote(node, roomId, seq) {
  const item = await client.itemOf(roomId, seq).catch(() => null);
  const words = item && !(item.expiresAt && item.expiresAt <= Date.now()) ? preview(item) : null;
  node.textContent = words ?? "message not available";
  node.classList.toggle("missing", !words);
}

/** Grouped reactions: emoji and count, who in the title and label; pressing one toggles one's own. */
function renderReactions(shown) {
  const by = new Map();
  for (const [user, emoji] of Object.entries(shown.reactions ?? {}).sort(([a], [b]) => (a < b ? -1 : 1))) {
    if (!by.has(emoji)) by.set(emoji, []);
    by.get(emoji).push(user);
  }
  if (!by.size) return null;
  return el("div", { class: "reactions" }, ...[...by].map(([emoji, users]) => {
    const who = `${emoji} by ${users.join(", ")}`;
    return el("button", {
      type: "button", class: `reaction${users.includes(client.me) ? " mine" : ""}`, title: who, "aria-label": who, "data-emoji": emoji,
      "data-action": `reaction-${emoji}`, onclick: () => react(shown, emoji),
    }, `${emoji} ${users.length}`);
  }));
}

function renderActions(shown, own) {
  const canEdit = own && shown.payload.t === "text";
  return el("div", { class: "msg-actions", role: "group", "aria-label": `Actions for ${shown.sender}'s message` },
    el("button", { type: "button", "data-action": "reply", onclick: () => startCompose("reply", shown) }, "Reply"),
    el("button", { type: "button", "data-action": "react", "aria-expanded": "false", onclick: (e) => openPicker(e.currentTarget.closest("li"), shown) }, "React"),
    canEdit ? el("button", { type: "button", "data-action": "edit", onclick: () => startCompose("edit", shown) }, "Edit") : null,
    own ? el("button", { type: "button", "data-action": "delete", onclick: (e) => confirmDelete(e.currentTarget.closest("li"), shown) }, "Delete") : null);
}

/** Sends a reaction; the same emoji again takes it back (§21). */
function react(shown, emoji) {
  if (activeRoom === null) return;
  const mine = shown.reactions?.[client.me];
  client.sendPayload(activeRoom, c.reactPayload(shown.seq, mine === emoji ? "" : emoji));
}

function openPicker(li, shown) {
  const existing = li.querySelector(".react-picker");
  if (existing) {
    existing.remove();
    li.querySelector("[data-action=react]")?.setAttribute("aria-expanded", "false");
    return;
  }
  const close = () => {
    picker.remove();
    const button = li.querySelector("[data-action=react]");
    button?.setAttribute("aria-expanded", "false");
    button?.focus();
  };
  const other = el("input", { type: "text", "aria-label": "Another emoji", placeholder: "other emoji", maxlength: "32" });
  const picker = el("div", { class: "react-picker", role: "group", "aria-label": "Pick a reaction",
    onkeydown: (e) => {
      if (e.key === "Escape") {
        e.preventDefault();
        close();
      }
    } },
  ...REACTIONS.map((emoji) => el("button", { type: "button", "aria-label": `React ${emoji}`, onclick: () => {
    react(shown, emoji);
    close();
  } }, emoji)),
  el("form", { class: "row", onsubmit: (e) => {
    e.preventDefault();
    const emoji = other.value.trim();
    if (!emoji) return;
    if (!c.isValidEmoji(emoji)) return showProblem("A reaction is at most 64 bytes, without control characters.");
    react(shown, emoji);
    close();
  } }, other, el("button", { type: "submit" }, "React")));
  li.querySelector(".msg-actions").after(picker);
  li.querySelector("[data-action=react]")?.setAttribute("aria-expanded", "true");
  picker.querySelector("button").focus();
}

function confirmDelete(li, shown) {
  const actions = li.querySelector(".msg-actions");
  const restore = () => actions.replaceWith(renderActions(shown, true));
  const yes = el("button", { type: "button", class: "danger", "data-action": "confirm-delete", onclick: () => {
    client.sendPayload(activeRoom, c.deletePayload(shown.seq));
    if (compose?.seq === shown.seq) endCompose();
  } }, "Delete for everyone");
  actions.replaceChildren(yes, el("button", { type: "button", onclick: () => {
    restore();
    li.querySelector("[data-action=delete]")?.focus();
  } }, "Cancel"));
  yes.focus();
}

function startCompose(mode, shown) {
  compose = { mode, seq: shown.seq, sender: shown.sender };
  const input = $("message-input");
  $("compose-context-text").textContent = mode === "reply" ? `Replying to ${preview(shown)}` : "Editing your message";
  $("compose-context").hidden = false;
  if (mode === "edit") input.value = shown.payload.text;
  input.focus();
}

function endCompose() {
  if (compose?.mode === "edit") $("message-input").value = "";
  compose = null;
  $("compose-context").hidden = true;
}

$("compose-cancel").addEventListener("click", () => {
  endCompose();
  $("message-input").focus();
});

/** An item changed (edited, reacted to, deleted): shown again in place, focus kept where it was. */
function onUpdated({ roomId, items }) {
  if (roomId !== activeRoom) return;
  const room = client.rooms.get(roomId);
  for (const item of items) {
    const old = $("timeline").querySelector(`:scope > li[data-seq="${item.seq}"]`);
    if (old) {
      const focused = old.contains(document.activeElement) ? document.activeElement.dataset.action ?? "" : null;
      const fresh = renderItem(room, item);
      fresh.dataset.day = old.dataset.day;
      if (item.type !== "message") revokeBlob(roomId, item.seq);
      old.replaceWith(fresh);
      if (focused !== null) (fresh.querySelector(`[data-action="${CSS.escape(focused)}"]`) ?? fresh.querySelector("[data-action=react]") ?? fresh).focus();
    }
    for (const quote of $("timeline").querySelectorAll(`.quote[data-of="${item.seq}"]`)) fillQuote(quote, roomId, item.seq);
    if (compose?.seq === item.seq && item.type !== "message") endCompose();
  }
  renderSeenBy();
}

function revokeBlob(roomId, seq) {
  const key = `${roomId}:${seq}`;
  if (blobUrls.has(key)) URL.revokeObjectURL(blobUrls.get(key));
  blobUrls.delete(key);
}

/** An item as it is to be shown now: one whose time ran out (the sweep comes within a second) shows as expired already. */
function shownNow(item, now) {
  return item.expiresAt && item.expiresAt <= now ? expire({ ...item }) : item;
}

/** "seen by alice, bob" under the newest message each other member has read. */
function renderSeenBy() {
  const list = $("timeline");
  for (const node of list.querySelectorAll(".seen-by")) node.remove();
  const room = client?.rooms.get(activeRoom);
  if (!room) return;
  const shown = [...list.querySelectorAll(":scope > li.msg[data-seq]:not(.pending)")];
  const under = new Map();
  for (const [user, r] of room.receipts) {
    if (user === client.me || !r.read) continue;
    const li = shown.findLast((n) => Number(n.dataset.seq) <= r.read);
    if (!li) continue;
    if (!under.has(li)) under.set(li, []);
    under.get(li).push(user);
  }
  for (const [li, users] of under) li.append(el("p", { class: "seen-by" }, `seen by ${users.sort().join(", ")}`));
}

function renderTyping() {
  const users = activeRoom === null ? [] : client.typingIn(activeRoom);
  $("typing").textContent = users.length ? `${users.join(", ")} ${users.length > 1 ? "are" : "is"} typing…` : "";
}

// ------------------------------------------------------------ requests, blocks, admins, timer (§21)

function requester(room) {
  return room.info.members.find((m) => m !== client.me) ?? room.info.creator;
}

function renderRequests() {
  // A blocked user's request is never shown, even while a room list fetched
  // before the block (or a live entry of theirs) still carries it.
  const requests = [...client.rooms.values()].filter((r) => client.isRequest(r) && !client.blocked.has(requester(r)));
  $("no-requests").hidden = requests.length > 0;
  $("request-list").replaceChildren(...requests.map((room) => {
    const from = requester(room);
    const id = room.info.id;
    return el("li", { class: "request-item", "data-room": id },
      el("span", {}, `${from} wants to message you`),
      el("div", { class: "row" },
        el("button", { type: "button", onclick: () => act(async () => {
          await client.accept(id);
          renderRooms();
          openRoom(id);
        }) }, "Accept"),
        el("button", { type: "button", class: "quiet", onclick: () => act(() => client.decline(id)) }, "Decline"),
        el("button", { type: "button", class: "danger", onclick: () => act(() => client.block(from)) }, "Block")));
  }));
}

function renderBlocked() {
  const users = [...(client?.blocked ?? [])].sort();
  $("no-blocked").hidden = users.length > 0;
  $("blocked-list").replaceChildren(...users.map((user) => el("li", { "data-user": user }, `${user} `,
    el("button", { type: "button", onclick: () => act(() => client.unblock(user)) }, `Unblock ${user}`))));
}

$("blocked-me").addEventListener("click", () => act(async () => {
  await client.refreshBlocks();
  renderBlocked();
  $("blocked-dialog").showModal();
}));

$("block-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const user = $("block-username").value.trim().toLowerCase();
  formAct(event.target, async () => {
    if (user === client.me) throw new Error("That is you.");
    await client.block(user);
    $("block-username").value = "";
  }, () => ({ user, action: "block" }));
});

function renderMembers() {
  const room = client.rooms.get(activeRoom);
  if (!room) return;
  const { creator, members } = room.info;
  const admins = room.info.admins ?? [];
  const iAmCreator = creator === client.me;
  const iAmAdmin = admins.includes(client.me);
  const isDm = room.info.kind === "dm";
  $("members-body").replaceChildren(...members.map((m) => {
    const role = m === creator ? "creator" : admins.includes(m) ? "admin" : null;
    const change = (work) => act(async () => {
      await work();
      await client.refreshRoom(room);
      renderMembers();
    });
    return el("li", { "data-user": m },
      el("span", { class: "member-name" }, m === client.me ? `${m} (you)` : m),
      role ? el("span", { class: "hint" }, `(${role})`) : null,
      !isDm && iAmCreator && m !== client.me
        ? el("button", { type: "button", onclick: () => change(() => (admins.includes(m) ? api.demote(room.info.id, m) : api.promote(room.info.id, m))) },
          admins.includes(m) ? `Remove ${m} as admin` : `Make ${m} admin`)
        : null,
      !isDm && (iAmCreator || iAmAdmin) && m !== client.me && m !== creator && (iAmCreator || !admins.includes(m))
        ? el("button", { type: "button", class: "danger", onclick: () => change(() => api.remove(room.info.id, m)) }, `Remove ${m}`)
        : null);
  }));
}

$("members-room").addEventListener("click", () => {
  renderMembers();
  $("members-dialog").showModal();
});

$("timer-select").addEventListener("change", (event) => {
  const duration = Number(event.target.value);
  const roomId = activeRoom;
  act(async () => {
    try {
      await client.setTimer(roomId, duration);
    } finally {
      renderRoomHeader();
    }
  });
});

/** What the user lets others see (read receipts, typing), kept per user in this browser. */
async function loadSettings(username) {
  const saved = (await store?.getMeta("settings").catch(() => null))
    ?? JSON.parse(localStorage.getItem(`hush.settings.${username}`) ?? "null");
  return { readReceipts: saved?.readReceipts !== false, typing: saved?.typing !== false };
}

function saveSettings() {
  if (!client) return;
  client.settings = { readReceipts: $("send-read-receipts").checked, typing: $("send-typing").checked };
  localStorage.setItem(`hush.settings.${client.me}`, JSON.stringify(client.settings));
  store?.setMeta("settings", client.settings).catch(() => {});
}
$("send-read-receipts").addEventListener("change", saveSettings);
$("send-typing").addEventListener("change", saveSettings);

const IMAGE_MAX = { width: 480, height: 320 };

function renderPayload(roomId, seq, payload) {
  if (payload.t === "text") return el("p", { class: "text" }, payload.text);
  // Never a path: what is after the last slash, control characters replaced (§19).
  const name = c.safeFileName(payload.name);
  if (!payload.data) return el("p", { class: "file" }, `📎 ${name} (not in this browser's store)`);
  const key = `${roomId}:${seq}`;
  if (!blobUrls.has(key)) blobUrls.set(key, URL.createObjectURL(new Blob([payload.data], { type: payload.mime })));
  const url = blobUrls.get(key);
  const size = `${name} (${formatSize(payload.data.length)})`;
  const download = el("a", { href: url, download: name, class: "download" }, `Download ${size}`);
  if (IMAGE_TYPES.has(payload.mime)) {
    const img = el("img", { src: url, alt: name, class: "inline-image", decoding: "async" });
    if (payload.width && payload.height) {
      // The size is known before the image loads: its box is reserved, so
      // the view does not jump when it arrives (scaled like the CSS does).
      const scale = Math.min(1, IMAGE_MAX.width / payload.width, IMAGE_MAX.height / payload.height);
      img.width = Math.max(1, Math.round(payload.width * scale));
      img.height = Math.max(1, Math.round(payload.height * scale));
    }
    return el("figure", {}, img, el("figcaption", {}, download));
  }
  if (payload.mime.startsWith("audio/")) {
    return el("figure", {}, el("audio", { src: url, controls: true, "aria-label": name }), el("figcaption", {}, download));
  }
  return el("p", { class: "file" }, "📎 ", download);
}

const formatSize = (n) => (n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`);

/**
 * Messages of this tab not yet in the log, after the timeline's items,
 * updated in place by client id (a focused Retry button stays focused).
 */
function renderPending() {
  if (!client || activeRoom === null) return;
  const list = $("timeline");
  const existing = new Map([...list.querySelectorAll(":scope > li.pending")].map((li) => [li.dataset.clientId, li]));
  for (const p of client.pending.filter((x) => x.roomId === activeRoom && (!c.RELATION_TYPES.has(x.payload.t) || x.state === "failed"))) {
    const sending = p.state === "sealed" && client.isInFlight(p);
    const label = sending ? "sending…" : { failed: `not sent: ${p.error}`, acked: "sent" }[p.state] ?? "waiting to send";
    const className = `msg own pending ${p.state === "new" ? "queued" : p.state}`;
    let li = existing.get(p.clientId);
    existing.delete(p.clientId);
    if (!li) {
      li = el("li", { "data-client-id": p.clientId },
        el("div", { class: "meta" }, el("span", { class: "sender" }, `${client.me} (you)`), " ", el("span", { class: "state" })),
        el("div", { class: "body" }, p.payload.t === "text" ? el("p", { class: "text" }, p.payload.text)
          : p.payload.t === "file" ? el("p", { class: "file" }, `📎 ${p.payload.name}`)
            : el("p", { class: "text" }, `your ${p.payload.t === "react" ? "reaction" : p.payload.t} of a message`)));
      list.append(li);
    }
    li.className = className;
    li.toggleAttribute("data-saved", p.key !== undefined);
    li.querySelector(".state").textContent = label;
    if (p.state === "failed" && !li.querySelector(".retry")) {
      li.append(el("div", { class: "actions" },
        el("button", { type: "button", class: "retry", onclick: () => client.retry(p) }, "Try again"),
        el("button", { type: "button", class: "dismiss", onclick: () => client.dismiss(p) }, "Dismiss")));
    }
  }
  for (const li of existing.values()) li.remove();
  if (timeline.isStuck) timeline.toBottom();
}

function onEntries({ roomId, items, isLive }) {
  const room = client.rooms.get(roomId);
  if (!room) return;
  if (roomId === activeRoom && timeline.roomId === roomId) {
    timeline.append(items.map((i) => shownNow(i, Date.now())));
    if (items.some((i) => i.sender === client.me)) timeline.follow();
    renderSeenBy();
    if (!document.hidden) {
      clearTimeout(onEntries.readTimer);
      onEntries.readTimer = setTimeout(() => client?.markRead(roomId), 300);
    }
  }
  if (isLive && document.hidden) {
    const fresh = items.filter((i) => i.type === "message" && i.sender !== client.me);
    if (fresh.length) {
      const last = fresh.at(-1);
      notifier.message({
        roomId, title: client.title(room), sender: last.sender, count: fresh.length,
        text: last.payload?.t === "text" ? last.payload.text : `📎 ${last.payload?.name ?? "a file"}`,
      });
    }
  }
  clearTimeout(onEntries.roomsTimer);
  onEntries.roomsTimer = setTimeout(renderRooms, 50);
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && activeRoom !== null) client?.markRead(activeRoom);
});

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("message-input");
  const text = input.value;
  if (!text.trim() || activeRoom === null) return;
  input.value = "";
  formError($("composer"), null);
  notifier?.askOnce();
  const payload = compose?.mode === "edit" ? c.editPayload(compose.seq, text) : c.textPayload(text, compose?.mode === "reply" ? compose.seq : null);
  compose = null;
  $("compose-context").hidden = true;
  client.typing(activeRoom, false);
  client.sendPayload(activeRoom, payload);
  timeline.follow();
});

$("message-input").addEventListener("input", (event) => {
  if (activeRoom !== null) client?.typing(activeRoom, event.target.value.trim() !== "");
});

$("message-input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  } else if (event.key === "Escape" && compose) {
    event.preventDefault();
    endCompose();
  }
});

/** An image's pixel size, read in the page (null if it is not an image the browser can read). */
async function imageSize(file) {
  if (!IMAGE_TYPES.has(file.type) || typeof createImageBitmap !== "function") return null;
  try {
    const bitmap = await createImageBitmap(file);
    const size = { width: bitmap.width, height: bitmap.height };
    bitmap.close();
    return size;
  } catch {
    return null;
  }
}

$("file-input").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  event.target.value = "";
  if (!file || activeRoom === null) return;
  formError($("composer"), null);
  // What fits one body once sealed (§19); refused before anything is read or encrypted.
  const limit = c.maxAttachmentBytes(client.maxBodyBytes, client.identity.current.public.bits / 8);
  if (file.size > limit) {
    formError($("composer"), `${file.name} is too large to send: files can be at most ${formatSize(limit)} here, and this one is ${formatSize(file.size)}. Nothing was sent.`);
    return;
  }
  const roomId = activeRoom;
  const size = await imageSize(file);
  const data = new Uint8Array(await file.arrayBuffer());
  notifier?.askOnce();
  const replyTo = compose?.mode === "reply" ? compose.seq : null;
  if (replyTo) endCompose();
  client.sendPayload(roomId, c.filePayload(c.safeFileName(file.name), file.type || "application/octet-stream", data, size, replyTo));
  timeline.follow();
});
document.querySelector("label.file-button").addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    $("file-input").click();
  }
});

$("invite-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const user = $("invite-username").value.trim().toLowerCase();
  formAct(event.target, async () => {
    await api.invite(activeRoom, user);
    $("invite-username").value = "";
  }, () => ({ user, action: "invite" }));
});

$("leave-room").addEventListener("click", () => act(async () => {
  const id = activeRoom;
  await api.leave(id);
  await client.enqueue(() => client.refreshRooms());
  if (activeRoom === id) closeRoom();
  renderRooms();
}));

$("logout").addEventListener("click", () => signOut(true));

function downloadBackup() {
  if (!identityRecord?.bundle) return;
  const url = URL.createObjectURL(new Blob([identityRecord.bundle], { type: "application/json" }));
  const a = el("a", { href: url, download: `${identityRecord.username}.hush-key.json` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  idb.del(`backup-due:${identityRecord.username}`).then(renderBackupDue, () => {});
}

$("export-key").addEventListener("click", downloadBackup);

/** After sign-up, until the backup is downloaded: the key lives only in this browser. */
async function renderBackupDue() {
  const due = identityRecord && (await idb.get(`backup-due:${identityRecord.username}`).catch(() => false));
  const box = $("backup-due");
  if (!due) {
    box.hidden = true;
    return;
  }
  box.replaceChildren(
    el("strong", {}, "Download your key backup now."),
    el("p", {}, "Your private key exists only in this browser. If this browser's data is cleared or the device is lost, "
      + "you cannot read your messages anywhere else. The backup is sealed with your key passphrase; keep it somewhere safe."),
    el("div", { class: "row" },
      el("button", { type: "button", class: "primary", onclick: downloadBackup }, "Download key backup"),
      el("button", { type: "button", class: "quiet", onclick: () => (box.hidden = true) }, "Remind me next time")));
  box.hidden = false;
}

$("notify-text").addEventListener("change", (event) => {
  if (notifier) notifier.showText = event.target.checked;
  notifier?.askOnce();
});

$("menu-button").addEventListener("click", () => {
  const isOpen = document.body.classList.toggle("menu-open");
  $("menu-button").setAttribute("aria-expanded", String(isOpen));
});

// ------------------------------------------------------------ search

/** Searches this browser's store (decrypted here); the server is never asked. */
$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const query = $("search-input").value.trim();
  const results = $("search-results");
  if (!query || !store) {
    results.replaceChildren();
    return;
  }
  formAct(event.target, async () => {
    results.replaceChildren(el("li", { class: "hint" }, "Searching…"));
    await Promise.all([...client.rooms.values()].map((room) => client.flushSaves(room)));
    const found = await store.search(query);
    if ($("search-input").value.trim() !== query) return;
    results.replaceChildren(...(found.length ? found.map(({ room, item }) => {
      const r = client.rooms.get(room);
      const text = item.payload.t === "text" ? item.payload.text : `📎 ${item.payload.name}`;
      return el("li", { class: "search-hit", "data-room": room, "data-seq": item.seq },
        el("button", { type: "button", onclick: () => openRoom(room, { aroundSeq: item.seq }) },
          el("span", { class: "hint" }, `${r ? client.title(r) : `room ${room}`} · ${item.sender} · ${new Date(item.ts).toLocaleString()}`),
          el("span", { class: "hit-text" }, text)));
    }) : [el("li", { class: "hint" }, `Nothing found for “${query}” in this browser's messages.`)]));
  });
});

// ------------------------------------------------------------ keys & trust

const keyNotices = new Map(); // user -> {user, fingerprint}: rotations to tell about

function onKeyNotice(notice) {
  if (notice.kind === "rotated") keyNotices.set(notice.user, notice);
  renderKeyWarnings();
}

function renderKeyWarnings() {
  if (!client) return;
  const blocked = client.directory.blocked();
  const warnings = blocked.map((user) => {
    const r = client.directory.record(user);
    return el("div", { class: "key-warning", role: "alert", "data-user": user },
      el("strong", {}, `⚠ ${user}'s key has changed`),
      el("p", {}, `The server now gives a different key for ${user}, and it is NOT signed by their previous key. `
        + `Someone may be impersonating ${user}. Messages signed with the new key are rejected and nothing is encrypted for ${user} until you compare safety numbers with them (in person or on a call) and accept the new key.`),
      el("p", { class: "fingerprint" }, `Pinned: ${c.displayFingerprint(r.fingerprint)}`),
      el("button", { type: "button", onclick: () => showSecurity(user) }, `Compare keys with ${user}`));
  });
  // A rotation signed by the old key is trusted by itself: say so plainly,
  // with a fingerprint short enough for a phone, and what to do.
  const rotations = [...keyNotices.values()].filter((n) => !blocked.includes(n.user)).map(({ user, fingerprint }) =>
    el("div", { class: "key-notice", role: "status", "data-user": user },
      el("strong", {}, `${user} has a new key`),
      el("p", {}, `${user} replaced their key, and the old key signed the new one, so their messages stay trusted. `
        + `New fingerprint: `, el("span", { class: "fingerprint" }, shortFingerprint(fingerprint)), ". "
        + `If you compared safety numbers with ${user} before, compare them again.`),
      el("div", { class: "row" },
        el("button", { type: "button", onclick: () => showSecurity(user) }, `Compare keys with ${user}`),
        el("button", { type: "button", class: "quiet", onclick: () => {
          keyNotices.delete(user);
          renderKeyWarnings();
        } }, "Dismiss"))));
  $("key-warnings").replaceChildren(...warnings, ...rotations);
}

$("security-room").addEventListener("click", () => {
  const room = client.rooms.get(activeRoom);
  const others = room.info.members.filter((m) => m !== client.me);
  showSecurity(room.info.kind === "dm" ? others[0] : null, others);
});
$("security-me").addEventListener("click", () => showSecurity(null, []));

/** The security dialog: my fingerprint, then per peer its key, safety number and actions. */
async function showSecurity(focusUser, members = [focusUser], { isRefresh = false } = {}) {
  if (isRefresh && !$("security-dialog").open) return;
  const me = client.identity.current.public;
  const body = $("security-body");
  body.replaceChildren(el("section", {}, el("h3", {}, `Your key (${client.me})`),
    el("p", { class: "fingerprint", "data-testid": "my-fingerprint" }, c.displayFingerprint(me.fpHex))));
  for (const user of (focusUser ? [focusUser] : members)) {
    let peer;
    try {
      peer = await client.directory.peer(user);
    } catch (e) {
      body.append(el("p", {}, `${user}: ${e.message}`));
      continue;
    }
    renderKeyWarnings();
    const section = el("section", { class: "peer-keys", "data-user": user }, el("h3", {}, user));
    const safety = await c.safetyNumber(client.me, me.fp, user, peer.pinned.fp);
    section.append(
      el("p", {}, "Fingerprint: ", el("span", { class: "fingerprint" }, c.displayFingerprint(peer.pinned.fpHex))),
      el("p", {}, "Safety number (compare it with ", user, "):"),
      el("pre", { class: "safety-number", "data-testid": `safety-${user}` }, safety.split(" ").reduce((lines, g, i) => lines + g + (i % 4 === 3 ? "\n" : " "), "").trim()),
      el("p", { class: peer.isVerified ? "verified" : "hint" }, peer.isVerified ? "✓ Verified: you compared this safety number." : "Not verified yet."));
    if (peer.offered) {
      const offeredSafety = await c.safetyNumber(client.me, me.fp, user, peer.offered.fp);
      section.append(el("div", { class: "key-warning", role: "alert" },
        el("strong", {}, "New, unlinked key on offer"),
        el("p", { class: "fingerprint" }, c.displayFingerprint(peer.offered.fpHex)),
        el("p", {}, "Safety number with the new key:"),
        el("pre", { class: "safety-number" }, offeredSafety),
        el("button", { type: "button", onclick: () => act(async () => {
          await client.directory.trustOffered(user);
          renderKeyWarnings();
          showSecurity(focusUser, members, { isRefresh: true });
        }) }, `I compared it with ${user}: accept the new key`)));
    } else {
      section.append(el("button", { type: "button", onclick: () => act(async () => {
        await client.directory.markVerified(user, !peer.isVerified);
        showSecurity(focusUser, members, { isRefresh: true });
      }) }, peer.isVerified ? "Clear verified mark" : `Mark ${user} verified`));
    }
    body.append(section);
  }
  const dialog = $("security-dialog");
  if (!dialog.open && !isRefresh) dialog.showModal();
}

// ------------------------------------------------------------ devices

$("devices-me").addEventListener("click", () => act(async () => {
  const mine = new Set((await devicePool(client.me)).map((d) => d.id));
  const rows = client.ownDevices();
  if (!rows.some((r) => r.device === client.device.hex)) rows.unshift({ device: client.device.hex, lastTs: 0 });
  $("devices-body").replaceChildren(...rows.map(({ device, lastTs }) => {
    const where = device === client.device.hex ? "this tab"
      : device === "" ? "an older client (no device id)"
        : mine.has(device) ? "this browser (another tab, or earlier)" : "elsewhere";
    return el("tr", { "data-device": device, class: device === client.device.hex ? "this-device" : null },
      el("td", { class: "fingerprint" }, device ? device.slice(0, 8) : "—"),
      el("td", {}, where),
      el("td", {}, lastTs ? el("time", { datetime: new Date(lastTs).toISOString() }, new Date(lastTs).toLocaleString()) : "not yet"));
  }));
  $("devices-dialog").showModal();
}));

// ------------------------------------------------------------ start

async function boot() {
  // The page's files are kept for offline reloads (web/sw.js); the page works without it.
  navigator.serviceWorker?.register("/sw.js").catch(() => {});
  try {
    const session = await idb.get("session");
    const record = session && session.expires_at > Date.now() && (await idb.get(`identity:${session.username}`));
    if (record) {
      await enter(session.username, session.token, record);
      return;
    }
  } catch (e) {
    status(e.status === 401 ? "Your session has ended; log in again." : e.message);
    client?.stop();
    client = null;
    $("app").hidden = true;
  }
  $("welcome").hidden = false;
}

boot();
