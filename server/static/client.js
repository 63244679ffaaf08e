// A dependency-free client for wire protocol v1 (see protocol.md). ES module, no build step.
//
//   const client = new Client("/ws");
//   client.on("chat", (data) => ...);
//   client.on("connected", ({user}) => ...);  // after every (re)connect: restore what the server forgot
//   client.connect();                       // only once logged in: the socket carries the session
//   const reply = await client.request("join", {room: "lobby"}, {timeout: 5000});
//   client.emit("typing", {room: "lobby"});  // fire and forget; await it to learn if it was dropped

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
  4429: "too many connections for this user",
};

// Codes after which reconnecting cannot help: the session is over. The value is the error
// code that frames still waiting to be sent are rejected with. 4401 counts as "logged_out":
// for a caller it means the same as 4001 (show the login form).
const SESSION_ENDED = new Map([[4001, "logged_out"], [4002, "expired"], [4401, "logged_out"]]);
const DO_NOT_RETRY = new Set([1000, 1009, ...SESSION_ENDED.keys()]);

export class ProtocolError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

export class Client {
  constructor(url, {maxBuffered = 100, backoffMin = 500, backoffMax = 15000, replacedDelay = 250} = {}) {
    this.url = new URL(url, location.href.replace(/^http/, "ws")).href;
    this.state = "idle"; // idle, connecting, connected, reconnecting, closed
    this.lastClose = null; // {code, reason, meaning}
    this.socketId = null;
    this.user = null;
    this.reconnectAttempts = 0;
    this._options = {maxBuffered, backoffMin, backoffMax, replacedDelay};
    this._ws = null;
    this._listeners = new Map();
    this._requestHandlers = new Map();
    this._pending = new Map(); // id -> {resolve, fail, timer, sent}: requests waiting for their ack
    this._buffer = []; // {frame, sent(), dropped(error)}: made while not connected, flushed after `connected`
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
    // A socket that close() gave up on may still report; it is no longer ours to act on.
    let opened = false;
    ws.onopen = () => { opened = true; };
    ws.onmessage = (message) => { if (this._ws === ws) this._receive(message.data); };
    ws.onclose = (event) => { if (this._ws === ws) this._closed(event.code, event.reason, opened); };
  }

  close() {
    const ws = this._ws;
    this._ws = null;
    clearTimeout(this._retryTimer);
    if (ws) ws.close(1000);
    this.lastClose = {code: 1000, reason: "closed by the page", meaning: CLOSE_MEANINGS[1000]};
    this._failInFlight();
    this._ended(1000);
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

  // Resolves once the frame is handed to the socket (not once the server ran it: use
  // `request` for that). Rejects with a ProtocolError when the frame will never be sent:
  // `buffer_full`, `logged_out`, `expired` (the session ended while it waited) or `closed`.
  // Most callers fire and forget, so a no-op catch is attached here: a dropped emit makes no
  // "unhandled rejection" noise, yet the promise returned is the original one, and a caller
  // that awaits it still sees the rejection.
  emit(event, data) {
    const handedOver = new Promise((resolve, reject) => {
      this._send({event, data}, {sent: resolve, dropped: reject});
    });
    handedOver.catch(() => {});
    return handedOver;
  }

  request(event, data, {timeout = 10000} = {}) {
    return new Promise((resolve, reject) => {
      const id = this._nextId++;
      const frame = {event, data, id};
      const fail = (error) => {
        clearTimeout(timer);
        this._pending.delete(id);
        reject(error);
      };
      const timer = setTimeout(() => {
        // The caller has given up on it: were it still buffered, the server must never get
        // it after a reconnect (it would run an action that was reported as failed).
        this._unbuffer(frame);
        fail(new ProtocolError("timeout", `no answer to ${event} within ${timeout} ms`));
      }, timeout);
      const pending = {resolve, fail, timer, sent: false};
      this._pending.set(id, pending);
      this._send(frame, {sent: () => { pending.sent = true; }, dropped: fail});
    });
  }

  _send(frame, {sent, dropped}) {
    if (this.state === "connected") {
      this._ws.send(JSON.stringify(frame));
      sent();
    } else if (this.state === "closed") {
      dropped(this._droppedBecauseClosed());
    } else if (this._buffer.length >= this._options.maxBuffered) {
      dropped(new ProtocolError("buffer_full", "too many messages waiting for the connection"));
    } else {
      this._buffer.push({frame, sent, dropped});
    }
  }

  _unbuffer(frame) {
    const index = this._buffer.findIndex((entry) => entry.frame === frame);
    if (index >= 0) this._buffer.splice(index, 1);
  }

  _flush() {
    // A `connected` listener may have closed the client; then _ended already dropped the rest.
    while (this.state === "connected" && this._buffer.length) {
      const {frame, sent} = this._buffer.shift();
      this._ws.send(JSON.stringify(frame));
      sent();
    }
  }

  _receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (frame === null || typeof frame !== "object") return;
    if ("ack" in frame) {
      const pending = this._pending.get(frame.ack);
      if (!pending) return;
      if (frame.error) pending.fail(new ProtocolError(frame.error.code, frame.error.message));
      else {
        clearTimeout(pending.timer);
        this._pending.delete(frame.ack);
        pending.resolve(frame.data);
      }
      return;
    }
    if (frame.event === "connected") {
      this.socketId = frame.data?.socket ?? null;
      this.user = frame.data?.user ?? null;
      this.reconnectAttempts = 0;
      this._setState("connected");
      // Listeners first, then the frames that waited: a new socket is in no room, and a
      // listener that re-joins must do so before a queued chat to that room arrives.
      this._dispatch("connected", frame.data);
      this._flush();
      return;
    }
    if (frame.id !== undefined) {
      this._answer(frame);
      return;
    }
    this._dispatch(frame.event, frame.data);
  }

  async _answer(frame) {
    const ws = this._ws;
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
    // The request's id means something only to the socket that asked.
    if (this.state === "connected" && this._ws === ws) ws.send(JSON.stringify(reply));
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

  _closed(code, reason, opened) {
    this._ws = null;
    // A reconnect attempt that found no server (1006 before the socket opened) is counted
    // in reconnectAttempts; the close that matters (1001, say) stays the one shown.
    if (opened || code !== 1006 || !this.lastClose) {
      this.lastClose = {code, reason, meaning: CLOSE_MEANINGS[code] ?? `closed (${code})`};
    }
    this._failInFlight();
    if (!this._wanted || DO_NOT_RETRY.has(code)) {
      this._ended(code);
      return;
    }
    this._setState("reconnecting");
    // 4003: a newer login gave this browser a new cookie, so no backoff. The server closes
    // only after sending the login's answer (with the cookie), but the login may have been
    // made by another tab or tool whose cookie reaches this page a moment later: a short pause.
    const delay = code === 4003 ? this._options.replacedDelay : this._backoff();
    this.reconnectAttempts += 1;
    this._retryTimer = setTimeout(() => this.connect(), delay);
  }

  // Requests that reached the socket got no answer: the close is their answer (protocol.md).
  // Those still buffered were never sent; they wait for the next socket (or their timeout).
  _failInFlight() {
    const error = new ProtocolError("closed", this.lastClose?.meaning ?? "closed");
    for (const pending of [...this._pending.values()]) {
      if (pending.sent) pending.fail(error);
    }
  }

  _ended(code) {
    this._wanted = false;
    const error = this._droppedBecauseClosed();
    for (const {dropped} of this._buffer.splice(0)) dropped(error);
    this._setState("closed");
    if (SESSION_ENDED.has(code)) this._dispatch("session-ended", this.lastClose);
  }

  _droppedBecauseClosed() {
    const code = SESSION_ENDED.get(this.lastClose?.code) ?? "closed";
    return new ProtocolError(code, `not sent: ${this.lastClose?.meaning ?? "not connected"}`);
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
