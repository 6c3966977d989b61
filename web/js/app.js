// The page: sign-up, log-in and key import, then the chat UI over a
// HushClient. Every piece of text that comes from the network is put into
// the page with textContent (never as HTML). Nothing leaves the page but
// the protocol's frames and requests.

import { Api, ApiError } from "./api.js";
import { b64decode, b64encode } from "./bytes.js";
import * as c from "./crypto.js";
import { HushClient } from "./client.js";
import { claimDevice, devicePool } from "./devices.js";
import { Directory } from "./directory.js";
import * as idb from "./idb.js";

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
const blobUrls = new Map(); // `${room}:${seq}` -> object URL

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

async function busy(form, work) {
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    await work();
  } catch (e) {
    status(`${e.message}`);
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
    if (!c.KEY_BITS.includes(Number($("reg-bits").value))) throw new Error("pick a key size");
    status("Making your key pair…");
    const pair = await c.generateKeyPair(Number($("reg-bits").value));
    status("Sealing the key backup with your passphrase…");
    const keyFile = await c.sealKeyFile(pair.pkcs8, pair.spki, passphrase);
    const priv = await c.privateIdentity(pair.pkcs8, pair.spki);
    pair.pkcs8.fill(0);
    status("Registering…");
    await register(username, password, priv);
    await storeIdentity(username, priv, [], JSON.stringify(c.exportBundle(username, keyFile), null, 2));
    await logIn(username, password);
  });
});

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  busy(event.target, () => logIn($("login-username").value.trim().toLowerCase(), $("login-password").value));
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
  });
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
  client = new HushClient({ api, token, identity, directory, device });
  client.addEventListener("rooms", renderRooms);
  client.addEventListener("entry", (e) => onEntry(e.detail));
  client.addEventListener("pending", () => {
    renderPending();
    renderConnection();
  });
  client.addEventListener("connection", renderConnection);
  client.addEventListener("presence", renderPresence);
  client.addEventListener("invitations", renderInvitations);
  client.addEventListener("key-notice", renderKeyWarnings);
  client.addEventListener("synced", (e) => e.detail.roomId === activeRoom && client.markRead(activeRoom));
  client.addEventListener("problem", (e) => showProblem(e.detail.message));
  client.addEventListener("signed-out", () => signOut(false));
  $("me").textContent = username;
  await client.start();
  $("welcome").hidden = true;
  $("app").hidden = false;
  status("");
  renderKeyWarnings();
}

async function signOut(tellServer = true) {
  if (tellServer) await api.logout().catch(() => {});
  client?.stop();
  client = null;
  api = new Api();
  activeRoom = null;
  await idb.del("session");
  for (const url of blobUrls.values()) URL.revokeObjectURL(url);
  blobUrls.clear();
  $("timeline").replaceChildren();
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

function renderRooms() {
  if (!client) return;
  const rooms = [...client.rooms.values()].sort((a, b) => (b.shown.at(-1)?.ts ?? 0) - (a.shown.at(-1)?.ts ?? 0) || a.info.id - b.info.id);
  $("no-rooms").hidden = rooms.length > 0;
  $("room-list").replaceChildren(...rooms.map((room) => {
    const id = room.info.id;
    const unread = id === activeRoom ? 0 : client.unread(room);
    const name = client.title(room);
    return el("li", {},
      el("button", {
        type: "button", class: `room-button${id === activeRoom ? " active" : ""}`, "data-room": id,
        "aria-current": id === activeRoom ? "true" : null,
        "aria-label": `${room.info.kind === "dm" ? "Direct message with" : "Room"} ${name}${unread ? `, ${unread} unread` : ""}`,
        onclick: () => openRoom(id),
      },
      el("span", { class: "room-kind", "aria-hidden": "true" }, room.info.kind === "dm" ? "@" : "#"),
      el("span", { class: "room-name" }, name),
      unread ? el("span", { class: "badge", "aria-hidden": "true" }, String(unread)) : null));
  }));
  if (activeRoom !== null && !client.rooms.has(activeRoom)) closeRoom();
  if (activeRoom !== null) renderRoomHeader();
}

function renderInvitations() {
  const list = client?.invitations ?? [];
  $("no-invitations").hidden = list.length > 0;
  $("invitation-list").replaceChildren(...list.map((inv) => el("li", {},
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
    }) }, `Join ${inv.name ?? ""}`))));
}

function renderPresence() {
  if (!client) return;
  $("online-list").replaceChildren(...[...client.online].sort().map((u) => el("li", { class: "online-user" }, el("span", { class: "dot", "aria-hidden": "true" }), u)));
  if (activeRoom !== null) renderRoomHeader();
}

$("create-room-form").addEventListener("submit", (event) => {
  event.preventDefault();
  act(async () => {
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
  act(async () => {
    const info = await api.dm($("dm-username").value.trim().toLowerCase());
    $("dm-username").value = "";
    await client.enqueue(async () => {
      if (!client.rooms.has(info.id)) {
        client.addRoom(info);
        client.sync([client.rooms.get(info.id)]);
      }
    });
    renderRooms();
    openRoom(info.id);
  });
});

// ------------------------------------------------------------ conversation

function openRoom(id) {
  activeRoom = id;
  document.body.classList.add("room-open");
  $("empty-state").hidden = true;
  $("room-view").hidden = false;
  renderRoomHeader();
  renderTimeline();
  client.markRead(id);
  $("message-input").focus();
}

function closeRoom() {
  activeRoom = null;
  document.body.classList.remove("room-open");
  $("room-view").hidden = true;
  $("empty-state").hidden = false;
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
}

const dayOf = (ts) => new Date(ts).toLocaleDateString(undefined, { weekday: "long", year: "numeric", month: "long", day: "numeric" });
const timeOf = (ts) => new Date(ts).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });

function renderTimeline() {
  const room = client.rooms.get(activeRoom);
  const timeline = $("timeline");
  timeline.replaceChildren();
  for (const shown of room.shown) appendShown(room, shown);
  renderPending();
  timeline.scrollTop = timeline.scrollHeight;
}

function appendShown(room, shown) {
  if (shown.type === "quiet") return;
  const timeline = $("timeline");
  const day = dayOf(shown.ts);
  const last = [...timeline.querySelectorAll("li[data-day]")].at(-1);
  if (last?.dataset.day !== day) timeline.append(el("li", { class: "day", "data-day": day, role: "separator" }, day));
  const own = shown.sender === client.me;
  const meta = (extra) => el("div", { class: "meta" },
    el("span", { class: "sender" }, own ? `${shown.sender} (you)` : shown.sender), " ",
    el("time", { datetime: new Date(shown.ts).toISOString() }, timeOf(shown.ts)), extra);
  let item;
  if (shown.type === "unsupported") {
    item = el("li", { class: `msg unsupported${own ? " own" : ""}`, "data-seq": shown.seq },
      meta(null), el("div", { class: "body" }, el("p", { class: "text notice" }, shown.text)));
  } else if (shown.type === "event") {
    item = el("li", { class: "event", "data-seq": shown.seq }, el("time", { datetime: new Date(shown.ts).toISOString() }, timeOf(shown.ts)), " ", shown.text);
  } else if (shown.type === "rejected") {
    item = el("li", { class: `msg rejected${own ? " own" : ""}`, "data-seq": shown.seq },
      meta(null), el("div", { class: "body" }, `⚠ Rejected message: ${shown.reason}. It is not shown because it cannot be trusted.`));
  } else {
    const late = shown.isLate
      ? el("span", { class: "late", title: "stored after a later message of the same sender; shown where the log has it" }, " · delivered late")
      : null;
    item = el("li", { class: `msg${own ? " own" : ""}${shown.isLate ? " late" : ""}`, "data-seq": shown.seq },
      meta([shown.verified && !own ? el("span", { class: "verified", title: "verified key" }, " ✓ verified") : null, late]),
      el("div", { class: "body" }, renderPayload(room.info.id, shown.seq, shown.payload)));
  }
  const pendingStart = timeline.querySelector("li.pending");
  timeline.insertBefore(item, pendingStart);
}

function renderPayload(roomId, seq, payload) {
  if (payload.t === "text") return el("p", { class: "text" }, payload.text);
  const key = `${roomId}:${seq}`;
  if (!blobUrls.has(key)) blobUrls.set(key, URL.createObjectURL(new Blob([payload.data], { type: payload.mime })));
  const url = blobUrls.get(key);
  // Never a path: what is after the last slash, control characters replaced (§19).
  const name = c.safeFileName(payload.name);
  const size = `${name} (${formatSize(payload.data.length)})`;
  const download = el("a", { href: url, download: name, class: "download" }, `Download ${size}`);
  if (IMAGE_TYPES.has(payload.mime)) {
    return el("figure", {}, el("img", { src: url, alt: name, class: "inline-image" }), el("figcaption", {}, download));
  }
  if (payload.mime.startsWith("audio/")) {
    return el("figure", {}, el("audio", { src: url, controls: true, "aria-label": name }), el("figcaption", {}, download));
  }
  return el("p", { class: "file" }, "📎 ", download);
}

const formatSize = (n) => (n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`);

function renderPending() {
  if (!client || activeRoom === null) return;
  const timeline = $("timeline");
  timeline.querySelectorAll("li.pending").forEach((n) => n.remove());
  for (const p of client.pending.filter((x) => x.roomId === activeRoom)) {
    const sending = p.state === "sealed" && client.isInFlight(p);
    const label = sending ? "sending…" : { failed: `not sent: ${p.error}`, acked: "sent" }[p.state] ?? "waiting to send";
    timeline.append(el("li", { class: `msg own pending ${p.state === "new" ? "queued" : p.state}`, "data-client-id": p.clientId, "data-saved": p.key !== undefined },
      el("div", { class: "meta" }, el("span", { class: "sender" }, `${client.me} (you)`), " ", el("span", { class: "state" }, label)),
      el("div", { class: "body" }, p.payload.t === "text" ? el("p", { class: "text" }, p.payload.text) : el("p", { class: "file" }, `📎 ${p.payload.name}`))));
  }
  timeline.scrollTop = timeline.scrollHeight;
}

function onEntry({ roomId, shown }) {
  const room = client.rooms.get(roomId);
  if (roomId === activeRoom) {
    const timeline = $("timeline");
    const atBottom = timeline.scrollHeight - timeline.scrollTop - timeline.clientHeight < 80;
    appendShown(room, shown);
    if (atBottom || shown.sender === client.me) timeline.scrollTop = timeline.scrollHeight;
    if (!document.hidden) {
      room.lastRead = shown.seq;
      clearTimeout(onEntry.readTimer);
      onEntry.readTimer = setTimeout(() => client?.markRead(roomId), 300);
    }
  }
  clearTimeout(onEntry.roomsTimer);
  onEntry.roomsTimer = setTimeout(renderRooms, 50);
}

document.addEventListener("visibilitychange", () => !document.hidden && activeRoom !== null && client?.markRead(activeRoom));

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("message-input");
  const text = input.value;
  if (!text.trim() || activeRoom === null) return;
  input.value = "";
  client.sendPayload(activeRoom, c.textPayload(text));
});

$("message-input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

$("file-input").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  event.target.value = "";
  if (!file || activeRoom === null) return;
  // What fits one body once sealed (§19); refused before anything is encrypted.
  const limit = c.maxAttachmentBytes(client.maxBodyBytes, client.identity.current.public.bits / 8);
  if (file.size > limit) {
    showProblem(`${file.name} is too large to send: this server takes files up to ${formatSize(limit)}, and this one is ${formatSize(file.size)}.`);
    return;
  }
  const data = new Uint8Array(await file.arrayBuffer());
  client.sendPayload(activeRoom, c.filePayload(c.safeFileName(file.name), file.type || "application/octet-stream", data));
});
document.querySelector("label.file-button").addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    $("file-input").click();
  }
});

$("invite-form").addEventListener("submit", (event) => {
  event.preventDefault();
  act(async () => {
    await api.invite(activeRoom, $("invite-username").value.trim().toLowerCase());
    $("invite-username").value = "";
  });
});

$("leave-room").addEventListener("click", () => act(async () => {
  const id = activeRoom;
  await api.leave(id);
  await client.enqueue(() => client.refreshRooms());
  if (activeRoom === id) closeRoom();
  renderRooms();
}));

$("logout").addEventListener("click", () => signOut(true));

$("export-key").addEventListener("click", () => {
  if (!identityRecord?.bundle) return;
  const url = URL.createObjectURL(new Blob([identityRecord.bundle], { type: "application/json" }));
  const a = el("a", { href: url, download: `${identityRecord.username}.hush-key.json` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
});

// ------------------------------------------------------------ keys & trust

function renderKeyWarnings() {
  if (!client) return;
  const blocked = client.directory.blocked();
  $("key-warnings").replaceChildren(...blocked.map((user) => {
    const r = client.directory.record(user);
    return el("div", { class: "key-warning", role: "alert", "data-user": user },
      el("strong", {}, `⚠ ${user}'s key has changed`),
      el("p", {}, `The server now gives a different key for ${user}, and it is NOT signed by their previous key. `
        + `Someone may be impersonating ${user}. Messages signed with the new key are rejected and nothing is encrypted for ${user} until you compare safety numbers with them (in person or on a call) and accept the new key.`),
      el("p", { class: "fingerprint" }, `Pinned: ${c.displayFingerprint(r.fingerprint)}`),
      el("button", { type: "button", onclick: () => showSecurity(user) }, `Compare keys with ${user}`));
  }));
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
