// The HTTP half of the wire protocol (docs/PROTOCOL.md §4), same origin.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code);
    this.status = status;
    this.code = code;
  }
}

export class Api {
  constructor(token = null) {
    this.token = token;
  }

  async request(method, path, body) {
    const headers = {};
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(`/api/v1${path}`, init);
    } catch {
      throw new ApiError(0, "network", "the server cannot be reached");
    }
    if (response.status === 204) return null;
    const data = await response.json().catch(() => null);
    if (!response.ok) {
      const e = data?.error ?? {};
      throw new ApiError(response.status, e.code ?? "http", e.message ?? `HTTP ${response.status}`);
    }
    return data;
  }

  challenge = () => this.request("POST", "/register/challenge");
  register = (body) => this.request("POST", "/register", body);
  login = (username, password) => this.request("POST", "/login", { username, password });
  logout = () => this.request("POST", "/logout");
  keysOf = (user) => this.request("GET", `/users/${encodeURIComponent(user)}/keys`);
  rooms = () => this.request("GET", "/rooms");
  room = (id) => this.request("GET", `/rooms/${id}`);
  createRoom = (name) => this.request("POST", "/rooms", { name });
  invite = (id, username) => this.request("POST", `/rooms/${id}/invite`, { username });
  join = (id) => this.request("POST", `/rooms/${id}/join`);
  leave = (id) => this.request("POST", `/rooms/${id}/leave`);
  dm = (username) => this.request("POST", "/dm", { username });
  invitations = () => this.request("GET", "/invitations");
  // §21
  remove = (id, username) => this.request("POST", `/rooms/${id}/remove`, { username });
  accept = (id) => this.request("POST", `/rooms/${id}/accept`);
  decline = (id) => this.request("POST", `/rooms/${id}/decline`);
  blocks = () => this.request("GET", "/blocks");
  block = (username) => this.request("PUT", `/blocks/${encodeURIComponent(username)}`);
  unblock = (username) => this.request("DELETE", `/blocks/${encodeURIComponent(username)}`);
  promote = (id, username) => this.request("POST", `/rooms/${id}/admins`, { username });
  demote = (id, username) => this.request("DELETE", `/rooms/${id}/admins/${encodeURIComponent(username)}`);
  setTimer = (id, body) => this.request("POST", `/rooms/${id}/timer`, { body });
}
