// The WebSocket half of the protocol (docs/PROTOCOL.md §7-§17): connects,
// authenticates with the first frame, keeps the connection alive with
// `ping` frames (a browser cannot see the server's pings), notices a dead
// server, and reconnects by itself with exponential backoff and jitter.
// What to do once `ready` arrives (sync, resend the outbox, who) is the
// client's business: the link only reports frames and its state.

const FIRST_DELAY_MS = 250;
const MAX_DELAY_MS = 10_000;

export class Link {
  constructor(token, { onFrame, onState, onUnauthorized }) {
    this.token = token;
    this.onFrame = onFrame;
    this.onState = onState;
    this.onUnauthorized = onUnauthorized;
    this.socket = null;
    this.isReady = false;
    this.isStopped = false;
    this.delay = FIRST_DELAY_MS;
    this.timers = {};
    this.heartbeatMs = 20_000;
  }

  start() {
    this.isStopped = false;
    this.connect();
  }

  stop() {
    this.isStopped = true;
    Object.values(this.timers).forEach(clearTimeout);
    this.socket?.close(1000);
    this.socket = null;
  }

  /** Sends a frame if the connection is ready; false otherwise (caller keeps it). */
  send(frame) {
    if (!this.isReady || this.socket?.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify({ v: 1, ...frame }));
    return true;
  }

  connect() {
    if (this.isStopped) return;
    this.setState("connecting");
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
    const socket = new WebSocket(url);
    this.socket = socket;
    socket.onopen = () => socket.send(JSON.stringify({ v: 1, type: "auth", token: this.token }));
    socket.onmessage = (event) => {
      this.heard();
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame.type === "ready") {
        this.isReady = true;
        this.heartbeatMs = frame.heartbeat_ms || 20_000;
        this.timers.resetBackoff = setTimeout(() => (this.delay = FIRST_DELAY_MS), 5_000);
        this.schedulePing();
        this.setState("online");
      }
      this.onFrame(frame);
    };
    socket.onclose = (event) => this.closed(socket, event.code);
  }

  closed(socket, code) {
    if (socket !== this.socket) return;
    this.isReady = false;
    this.socket = null;
    clearTimeout(this.timers.ping);
    clearTimeout(this.timers.silence);
    clearTimeout(this.timers.resetBackoff);
    if (this.isStopped) return;
    if (code === 4001) {
      this.setState("signed_out");
      this.onUnauthorized();
      return;
    }
    const wait = this.delay / 2 + Math.random() * (this.delay / 2);
    this.delay = Math.min(this.delay * 2, MAX_DELAY_MS);
    this.setState("offline", Math.round(wait));
    this.timers.retry = setTimeout(() => this.connect(), wait);
  }

  /** Anything from the server is a sign of life; silence for 3 intervals means a dead link. */
  heard() {
    clearTimeout(this.timers.silence);
    this.timers.silence = setTimeout(() => this.socket?.close(4000), this.heartbeatMs * 3);
  }

  schedulePing() {
    clearTimeout(this.timers.ping);
    this.timers.ping = setTimeout(() => {
      this.send({ type: "ping" });
      this.schedulePing();
    }, this.heartbeatMs);
  }

  setState(state, retryMs) {
    this.state = state;
    this.onState(state, retryMs);
  }
}
