// Live streams for Mission Control: one reconnecting WebSocket to /ws for agent events and
// commands, and reconnecting Server-Sent Event streams (status, logs).
//
// Both come back by themselves after the server goes away; a stream refused for a lost session
// (401) raises "unauthorized" through api.js so the app can show the login screen.

import { api, emit } from "./api.js";

const BACKOFF_MS = [500, 1000, 2000, 4000, 8000];

/** The agent's event socket. `live.on("event", fn)` gets each bus event ({type, run_id, node_id, data, ts, seq}). */
export class Live {
  constructor(path = "/ws") {
    this.path = path;
    this.socket = null;
    this.state = "closed"; // closed | connecting | open
    this.handlers = new Map(); // kind -> Set(fn); kinds: event, state, message
    this.pending = new Map(); // request id -> {resolve, reject, timer}
    this.nextId = 1;
    this.attempt = 0;
    this.stopped = true;
    this.subscription = { type: "subscribe", runs: null, tokens: true };
  }

  on(kind, fn) {
    if (!this.handlers.has(kind)) this.handlers.set(kind, new Set());
    this.handlers.get(kind).add(fn);
    return () => this.handlers.get(kind).delete(fn);
  }

  _fire(kind, value) {
    for (const fn of this.handlers.get(kind) || []) {
      try {
        fn(value);
      } catch (err) {
        console.warn(err);
      }
    }
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._fire("state", state);
  }

  start() {
    this.stopped = false;
    if (!this.socket) this._connect();
  }

  stop() {
    this.stopped = true;
    const socket = this.socket;
    this.socket = null;
    if (socket) socket.close(1000, "logged out");
    this._failPending("the live connection was closed");
    this._setState("closed");
  }

  _connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}${this.path}`);
    this.socket = socket;
    this._setState("connecting");
    socket.addEventListener("open", () => {
      this.attempt = 0;
      this._setState("open");
      socket.send(JSON.stringify(this.subscription));
    });
    socket.addEventListener("message", (message) => {
      let data;
      try {
        data = JSON.parse(message.data);
      } catch {
        return;
      }
      if (data.type === "event") {
        this._fire("event", data.event);
        return;
      }
      const waiter = data.id !== undefined ? this.pending.get(data.id) : undefined;
      if (waiter) {
        this.pending.delete(data.id);
        clearTimeout(waiter.timer);
        if (data.type === "error") waiter.reject(new Error(data.message));
        else waiter.resolve(data);
      }
      this._fire("message", data);
    });
    socket.addEventListener("close", (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this._failPending("the live connection dropped; try again");
      this._setState("closed");
      if (this.stopped) return;
      if (event.code === 1008) {
        // policy violation: the server refused our session
        emit("unauthorized", new Error(event.reason || "session expired"));
        return;
      }
      const delay = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
      this.attempt += 1;
      setTimeout(() => {
        if (!this.stopped && !this.socket) this._connect();
      }, delay);
    });
  }

  _failPending(reason) {
    for (const [id, waiter] of this.pending) {
      clearTimeout(waiter.timer);
      waiter.reject(new Error(reason));
      this.pending.delete(id);
    }
  }

  /** Send a command ({type: "chat" | "run" | "approve" | "deny" | "cancel" | "subscribe", ...}); resolves to the reply. */
  request(message, timeoutMs = 15000) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) {
      return Promise.reject(new Error("not connected to corral yet; wait a moment and retry"));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error("corral did not answer in time"));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.socket.send(JSON.stringify({ ...message, id }));
    });
  }
}

/**
 * A reconnecting Server-Sent Events stream. `onData(parsedJson)` for each `event: <name>` message.
 * Returns a function that closes it. `onState("open" | "retrying")` follows the connection.
 */
export function stream(path, name, onData, onState = () => {}) {
  let source = null;
  let closed = false;
  let attempt = 0;
  let timer = null;

  const open = () => {
    source = new EventSource(path, { withCredentials: true });
    source.addEventListener("open", () => {
      attempt = 0;
      onState("open");
    });
    source.addEventListener(name, (message) => {
      try {
        onData(JSON.parse(message.data));
      } catch (err) {
        console.warn(err);
      }
    });
    source.addEventListener("error", () => {
      if (closed) return;
      source.close();
      onState("retrying");
      // EventSource hides the status code: ask /api/me whether the session is still good.
      api("/api/me").then(
        () => schedule(),
        (err) => {
          if (!err.unauthorized) schedule();
        },
      );
    });
  };
  const schedule = () => {
    if (closed) return;
    const delay = BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)];
    attempt += 1;
    timer = setTimeout(open, delay);
  };
  open();
  return () => {
    closed = true;
    clearTimeout(timer);
    if (source) source.close();
  };
}
