// A bare protocol client for tests that must post what no honest client
// would: bodies with payloads nobody knows, bodies signed with a retired
// key. The crypto is the page's own module (web/js/crypto.js, on Node's
// WebCrypto); HTTP goes through Node's fetch; the WebSocket runs in a
// Chromium page of the server's origin (Node 20 has no WebSocket client).

import * as c from "../../web/js/crypto.js";
import { b64decode, b64encode, hex } from "../../web/js/bytes.js";
import { fixturePem, vector } from "./harness.mjs";

export { c, b64decode, b64encode, hex };

const pkcs8Of = (pem) => b64decode(pem.replace(/-----[^-]+-----|\s/g, ""));

/** A fixture key (tests/fixtures/keys/NAME.pem) as a private identity. */
export async function fixtureIdentity(name) {
  const spki = vector("fingerprint").cases.find((x) => x.fixture === name).spki_der_b64;
  return c.privateIdentity(pkcs8Of(fixturePem(name)), b64decode(spki));
}

export class RawUser {
  constructor(server, username, token) {
    this.server = server;
    this.username = username;
    this.token = token;
  }

  /** Registers `username` with `identity` (a private identity) and logs in. */
  static async register(server, username, identity, password = `password of ${username}`) {
    const anon = new RawUser(server, username, null);
    const { challenge } = await anon.api("POST", "/register/challenge");
    const signature = await c.sign(identity, c.registrationProof(username, b64decode(challenge)));
    await anon.api("POST", "/register", {
      username, password, public_key: b64encode(identity.public.spki), challenge, signature: b64encode(signature),
    });
    return RawUser.login(server, username, password);
  }

  static async login(server, username, password = `password of ${username}`) {
    const { token } = await new RawUser(server, username, null).api("POST", "/login", { username, password });
    return new RawUser(server, username, token);
  }

  async api(method, path, body) {
    const headers = this.token ? { Authorization: `Bearer ${this.token}` } : {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(`${this.server.url}/api/v1${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const data = response.status === 204 ? null : await response.json();
    if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${JSON.stringify(data)}`);
    return data;
  }

  /** A user's current public identity, as the server gives it. */
  async publicKeyOf(user) {
    const keys = await this.api("GET", `/users/${user}/keys`);
    return c.publicIdentity(b64decode(keys.current.public_key));
  }

  /**
   * On one WebSocket (opened in `page`): sends `sends` ([{room, body}],
   * bodies as bytes) one at a time, each answered before the next, then
   * syncs `syncRooms` from the start. Returns {replies, entries}.
   */
  async exchange(page, { sends = [], syncRooms = [] } = {}) {
    const frames = sends.map((s, i) => ({
      v: 1, type: "send", id: `raw${i}`, room: s.room, client_id: s.clientId ?? `raw-${Date.now()}-${i}-${Math.random()}`, body: b64encode(s.body),
    }));
    return page.evaluate(async ({ url, token, frames, syncRooms }) => {
      const ws = new WebSocket(`${url.replace(/^http/, "ws")}/ws`);
      const incoming = [];
      let wake = () => {};
      ws.onmessage = (event) => {
        incoming.push(JSON.parse(event.data));
        wake();
      };
      const next = async (pick) => {
        for (;;) {
          const at = incoming.findIndex(pick);
          if (at >= 0) return incoming.splice(at, 1)[0];
          await new Promise((resolve) => (wake = resolve));
        }
      };
      await new Promise((resolve) => (ws.onopen = resolve));
      ws.send(JSON.stringify({ v: 1, type: "auth", token }));
      await next((f) => f.type === "ready");
      const replies = [];
      for (const frame of frames) {
        ws.send(JSON.stringify(frame));
        replies.push(await next((f) => f.id === frame.id));
      }
      const entries = [];
      if (syncRooms.length) {
        ws.send(JSON.stringify({ v: 1, type: "sync", rooms: syncRooms.map((room) => ({ room, after: 0 })) }));
        const left = new Set(syncRooms);
        while (left.size) {
          const f = await next((x) => x.type === "page" || x.type === "synced");
          if (f.type === "page") entries.push(...f.entries);
          else left.delete(f.room);
        }
      }
      ws.close();
      return { replies, entries };
    }, { url: this.server.url, token: this.token, frames, syncRooms });
  }

  /** Every entry of `room` this user can see, in log order. */
  async log(page, room) {
    return (await this.exchange(page, { syncRooms: [room] })).entries;
  }
}

/** The body kind byte of a log entry's body: 1 envelope, 2 distribution. */
export const bodyKindOf = (entry) => b64decode(entry.body)[5];
