// A dependency-free client for wire protocol v1 (see protocol.md). ES module, no build step.
//
//   const client = new Client("/ws");
//   client.on("chat", (data) => ...);
//   client.connect();                       // only once logged in: the socket carries the session
//   const reply = await client.request("join", {room: "lobby"}, {timeout: 5000});

export const CLOSE_MEANINGS = {
  1000: "closed normally",
  1001: "the server is restarting",
  1006: "the connection was lost",
  1009: "a message was too large",
  4001: "logged out",
  4002: "the session expired",
  4003: "logged in again elsewhere in this browser",
  4401: "not logged in",
  4408: "the connection was too slow",
};

// Codes after which reconnecting cannot help: the session is over.
const SESSION_ENDED = new Set([4001, 4002, 4401]);
const DO_NOT_RETRY = new Set([1000, 1009, ...SESSION_ENDED]);

export class ProtocolError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

export class Client {
  constructor(url, {maxBuffered = 100, backoffMin = 500, backoffMax = 15000} = {}) {
    this.url = new URL(url, location.href.replace(/^http/, "ws")).href;
    this.state = "idle"; // idle, connecting, connected, reconnecting, closed
    this.lastClose = null; // {code, reason, meaning}
    this.socketId = null;
    this.user = null;
    this.reconnectAttempts = 0;
    this._options = {maxBuffered, backoffMin, backoffMax};
    this._ws = null;
    this._listeners = new Map();
    this._requestHandlers = new Map();
    this._pending = new Map(); // id -> {resolve, reject, timer}
    this._buffer = []; // frames sent while not connected, flushed after `connected`
    this._nextId = 1;
    this._retryTimer = null;
    this._wanted = false;
  }

  connect() {
    this._wanted = true;
    clearTimeout(this._retryTimer);
    if (this._ws) return;
    this._setState(this.state === "reconnecting" ? "reconnecting" : "connecting");
    const ws = new WebSocket(this.url);
    this._ws = ws;
    ws.onmessage = (message) => this._receive(message.data);
    ws.onclose = (event) => this._closed(event.code, event.reason);
  }

  close() {
    this._wanted = false;
    clearTimeout(this._retryTimer);
    if (this._ws) this._ws.close(1000);
    this._ended(1000, "closed by the page");
  }

  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  // Answer server requests (frames with an `id`): the return value is the ack's data.
  onRequest(event, fn) {
    this._requestHandlers.set(event, fn);
  }

  emit(event, data) {
    this._send({event, data});
  }

  request(event, data, {timeout = 10000} = {}) {
    return new Promise((resolve, reject) => {
      const id = this._nextId++;
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new ProtocolError("timeout", `no answer to ${event} within ${timeout} ms`));
      }, timeout);
      this._pending.set(id, {resolve, reject, timer});
      try {
        this._send({event, data, id});
      } catch (error) {
        clearTimeout(timer);
        this._pending.delete(id);
        reject(error);
      }
    });
  }

  _send(frame) {
    if (this.state === "connected") {
      this._ws.send(JSON.stringify(frame));
    } else if (this.state === "closed") {
      throw new ProtocolError("closed", `not connected: ${this.lastClose?.meaning ?? "closed"}`);
    } else if (this._buffer.length >= this._options.maxBuffered) {
      throw new ProtocolError("buffer_full", "too many messages waiting for the connection");
    } else {
      this._buffer.push(frame);
    }
  }

  _receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if ("ack" in frame) {
      const pending = this._pending.get(frame.ack);
      if (!pending) return;
      this._pending.delete(frame.ack);
      clearTimeout(pending.timer);
      if (frame.error) pending.reject(new ProtocolError(frame.error.code, frame.error.message));
      else pending.resolve(frame.data);
      return;
    }
    if (frame.event === "connected") {
      this.socketId = frame.data.socket;
      this.user = frame.data.user;
      this.reconnectAttempts = 0;
      this._setState("connected");
      const waiting = this._buffer.splice(0);
      for (const f of waiting) this._ws.send(JSON.stringify(f));
    }
    if (frame.id !== undefined) {
      this._answer(frame);
      return;
    }
    this._dispatch(frame.event, frame.data);
  }

  async _answer(frame) {
    const handler = this._requestHandlers.get(frame.event);
    let reply;
    if (!handler) {
      reply = {ack: frame.id, error: {code: "unknown_event", message: `no handler for ${frame.event}`}};
    } else {
      try {
        reply = {ack: frame.id, data: await handler(frame.data)};
      } catch (error) {
        reply = {ack: frame.id, error: {code: error.code ?? "internal", message: String(error.message ?? error)}};
      }
    }
    if (this.state === "connected") this._ws.send(JSON.stringify(reply));
  }

  _dispatch(event, data) {
    for (const fn of this._listeners.get(event) ?? []) {
      try {
        fn(data);
      } catch (error) {
        console.error(`listener of ${event} failed`, error);
      }
    }
  }

  _closed(code, reason) {
    this._ws = null;
    this.lastClose = {code, reason, meaning: CLOSE_MEANINGS[code] ?? `closed (${code})`};
    // Requests in flight got no answer: the close is their answer.
    for (const [id, pending] of this._pending) {
      clearTimeout(pending.timer);
      pending.reject(new ProtocolError("closed", this.lastClose.meaning));
      this._pending.delete(id);
    }
    if (!this._wanted || DO_NOT_RETRY.has(code)) {
      this._ended(code, reason);
      return;
    }
    this._setState("reconnecting");
    // 4003: a newer login gave this browser a new cookie; it works now.
    const delay = code === 4003 ? 0 : this._backoff();
    this.reconnectAttempts += 1;
    this._retryTimer = setTimeout(() => {
      this._ws = null;
      this.connect();
    }, delay);
  }

  _ended(code, reason) {
    this._wanted = false;
    for (const frame of this._buffer.splice(0)) {
      const pending = frame.id && this._pending.get(frame.id);
      if (pending) {
        clearTimeout(pending.timer);
        pending.reject(new ProtocolError("closed", this.lastClose?.meaning ?? "closed"));
        this._pending.delete(frame.id);
      }
    }
    this._setState("closed");
    if (SESSION_ENDED.has(code)) this._dispatch("session-ended", this.lastClose);
  }

  _backoff() {
    const {backoffMin, backoffMax} = this._options;
    const ceiling = Math.min(backoffMax, backoffMin * 2 ** this.reconnectAttempts);
    return ceiling / 2 + Math.random() * (ceiling / 2); // jitter: clients do not return in step
  }

  _setState(state) {
    this.state = state;
    this._dispatch("state", {state, lastClose: this.lastClose});
  }
}
