// A dependency-free client for wire protocol v1 (see protocol.md). ES module, no build step;
// types in client.d.ts.
//
//   const client = new Client("/ws");
//   client.on("chat", (data) => ...);            // server events, whatever their name
//   client.onConnected(({user}) => ...);         // after every (re)connect: restore what the server forgot
//   client.onState(({state, lastClose}) => ...); // idle, connecting, connected, reconnecting, closed
//   client.onSessionEnded((lastClose) => ...);   // 4001, 4002, 4401: show the login form
//   client.connect();                            // only once logged in: the socket carries the session
//   await client.join("lobby");                  // re-joined after every reconnect, missed events replayed
//   client.onRecovered(({room, recovered, missed}) => ...); // after each re-join: what came back
//   const reply = await client.request("whoami", null, {timeout: 5000});
//   client.emit("typing", {room: "lobby"});      // fire and forget; await it to learn if it was dropped
//
// Server events and the client's own notifications never mix: `on` hears only event frames
// from the server (one named "state", "connected" or "session-ended" included), and the
// three `on...` notification methods hear only the client. The protocol's handshake (the
// first `connected` frame of each socket) is the client's: it is reported by onConnected,
// not by `on("connected")`. Every `on...` method returns a function that unsubscribes.

/** What each close code means, in words for people (protocol.md, "Close codes"). */
export const CLOSE_MEANINGS = {
  1000: "closed normally",
  1001: "the server is restarting",
  1002: "a message broke the WebSocket protocol",
  1006: "the connection was lost",
  1007: "a message was not valid UTF-8",
  1009: "a message was too large",
  1011: "the server failed to set up the connection",
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
const DO_NOT_RETRY = new Set([1000, 1002, 1007, 1009, ...SESSION_ENDED.keys()]);

/** A failure with the protocol's error `code` (protocol.md, "Error codes") or one of the client's. */
export class ProtocolError extends Error {
  /**
   * @param {string} code branch on this: e.g. `forbidden`, `timeout`, `closed`, `logged_out`
   * @param {string} message plain English for people
   */
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/**
 * @typedef {"idle" | "connecting" | "connected" | "reconnecting" | "closed"} State
 * @typedef {{code: number, reason: string, meaning: string}} CloseInfo
 * @typedef {{socket: string | null, user: {id: number, name: string} | null}} ConnectedInfo
 * @typedef {{room: string, recovered: boolean, missed: number, error?: ProtocolError}} RecoveryInfo
 */

/** One socket to the server, reconnected by close code, with emits buffered meanwhile. */
export class Client {
  /**
   * @param {string} url of the socket, e.g. "/ws" (relative to the page; http becomes ws)
   * @param {object} [options]
   * @param {number} [options.maxBuffered=100] emits and requests kept while not connected
   * @param {number} [options.backoffMin=500] ms before the first reconnect (then doubled, with jitter)
   * @param {number} [options.backoffMax=15000] ms at most between reconnects
   * @param {number} [options.replacedDelay=250] ms before reconnecting after 4003 (a newer login)
   */
  constructor(url, {maxBuffered = 100, backoffMin = 500, backoffMax = 15000, replacedDelay = 250} = {}) {
    /** @type {string} */ this.url = new URL(url, location.href.replace(/^http/, "ws")).href;
    /** @type {State} */ this.state = "idle";
    /** @type {CloseInfo | null} */ this.lastClose = null; // of the last socket, or by close()
    /** @type {string | null} */ this.socketId = null; // from the last handshake
    /** @type {ConnectedInfo["user"]} */ this.user = null; // from the last handshake
    /** @type {number} */ this.reconnectAttempts = 0; // since the last handshake
    this._options = {maxBuffered, backoffMin, backoffMax, replacedDelay};
    this._ws = null;
    this._listeners = new Map(); // server event name -> Set of fns
    this._notices = {state: new Set(), connected: new Set(), sessionEnded: new Set(), recovered: new Set()}; // the client's own
    // Rooms joined through join(): room -> {epoch, offset} of the last event shown, and
    // `joining` (joins under way) and `missed` (events they brought back).
    this._rooms = new Map();
    this._requestHandlers = new Map();
    this._pending = new Map(); // id -> {resolve, fail, timer, sent}: requests waiting for their ack
    this._buffer = []; // {frame, sent(), dropped(error)}: made while not connected, flushed after `connected`
    this._nextId = 1;
    this._retryTimer = null;
    this._wanted = false;
  }

  /** Open the socket (again) and keep it open by reconnecting; call it once logged in. */
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

  /** Close the socket for good (1000): no reconnect; buffered emits and requests are rejected. */
  close() {
    const ws = this._ws;
    this._ws = null;
    clearTimeout(this._retryTimer);
    if (ws) ws.close(1000);
    this.lastClose = {code: 1000, reason: "closed by the page", meaning: CLOSE_MEANINGS[1000]};
    this._failInFlight();
    this._ended(1000);
  }

  /**
   * Listen to a server event (any name; never the client's own notifications).
   * @param {string} event
   * @param {(data: any) => void} fn called with the event's `data`
   * @returns {() => void} unsubscribes
   */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  /**
   * Stop listening to a server event.
   * @param {string} event
   * @param {(data: any) => void} fn
   */
  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  /**
   * The client's state changed.
   * @param {(change: {state: State, lastClose: CloseInfo | null}) => void} fn
   * @returns {() => void} unsubscribes
   */
  onState(fn) {
    return subscribe(this._notices.state, fn);
  }

  /**
   * A socket was accepted (its `connected` handshake), after every reconnect too: re-join
   * rooms here. Emits buffered meanwhile are sent after these listeners ran.
   * @param {(info: ConnectedInfo) => void} fn
   * @returns {() => void} unsubscribes
   */
  onConnected(fn) {
    return subscribe(this._notices.connected, fn);
  }

  /**
   * The session is over (closed with 4001, 4002 or 4401): the client will not reconnect.
   * @param {(lastClose: CloseInfo) => void} fn
   * @returns {() => void} unsubscribes
   */
  onSessionEnded(fn) {
    return subscribe(this._notices.sessionEnded, fn);
  }

  /**
   * A room was joined again, after a reconnect or a gap in its events: `recovered` says
   * whether every missed event came back (`missed` of them, delivered to `on` listeners
   * before this); false means some are lost: refetch what the page shows of the room.
   * With `error`, the join failed and the client is no longer in the room.
   * @param {(info: RecoveryInfo) => void} fn
   * @returns {() => void} unsubscribes
   */
  onRecovered(fn) {
    return subscribe(this._notices.recovered, fn);
  }

  /**
   * Join a room (the server's `join` event) and stay in it: after every reconnect, and when
   * its events show a gap, the client joins again with the position of the last event it
   * got, and the server sends what was missed first. Listeners get each event of the room
   * once, in order (protocol.md, "Recovery").
   * @param {string} room
   * @param {{timeout?: number}} [options] ms to wait for the ack (10000)
   * @returns {Promise<any>} the join's ack data
   */
  async join(room, {timeout = 10000} = {}) {
    const known = this._rooms.has(room);
    if (!known) this._rooms.set(room, {epoch: null, offset: 0, joining: 0, missed: 0});
    try {
      return await this._joinRoom(room, timeout, false);
    } catch (error) {
      if (!known) this._rooms.delete(room);
      throw error;
    }
  }

  /**
   * Leave a room joined with join() (the server's `leave` event).
   * @param {string} room
   * @param {{timeout?: number}} [options]
   * @returns {Promise<any>} the leave's ack data
   */
  leave(room, {timeout = 10000} = {}) {
    this._rooms.delete(room);
    return this.request("leave", {room}, {timeout});
  }

  /** @returns {string[]} the rooms joined with join(), re-joined after every reconnect */
  get rooms() {
    return [...this._rooms.keys()];
  }

  async _joinRoom(room, timeout, recovering) {
    const state = this._rooms.get(room);
    const since = state.epoch === null ? undefined : {epoch: state.epoch, offset: state.offset};
    state.joining += 1;
    state.missed = 0;
    let ack;
    try {
      ack = await this.request("join", since ? {room, since} : {room}, {timeout});
    } finally {
      state.joining -= 1;
    }
    if (this._rooms.get(room) !== state) return ack; // left meanwhile
    if (typeof ack?.epoch === "string" && typeof ack.offset === "number") {
      if (ack.epoch !== state.epoch || !ack.recovered) state.epoch = ack.epoch;
      state.offset = since && !ack.recovered ? ack.offset : Math.max(state.offset, ack.offset);
    }
    if (since || recovering) {
      notify(this._notices.recovered, "recovered", {room, recovered: ack?.recovered === true, missed: state.missed});
    }
    return ack;
  }

  _rejoin(room) {
    this._joinRoom(room, 10000, true).catch((error) => {
      // Lost with the socket: the next one joins again. Refused: the room is left.
      if (error.code === "closed" || this._rooms.get(room)?.joining) return;
      this._rooms.delete(room);
      notify(this._notices.recovered, "recovered", {room, recovered: false, missed: 0, error});
    });
  }

  // Whether a room event is the next one of its room (else it is dropped): one had already
  // is a duplicate; one after a gap, or of a new epoch, sets off a re-join whose replay
  // brings it, in order.
  _inOrder(frame) {
    const state = this._rooms.get(frame.room);
    if (!state) return true; // not joined through join(): shown as it comes
    if (state.epoch === null) {
      state.epoch = frame.epoch;
      state.offset = frame.offset;
      return true;
    }
    if (frame.epoch === state.epoch && frame.offset <= state.offset) return false;
    if (frame.epoch === state.epoch && frame.offset === state.offset + 1) {
      state.offset = frame.offset;
      if (state.joining) state.missed += 1;
      return true;
    }
    if (!state.joining && this.state === "connected") this._rejoin(frame.room);
    return false;
  }

  /**
   * Answer server requests (frames with an `id`) named `event`; one handler per name.
   * A throw becomes an error ack with the error's `code` (else `internal`).
   * @param {string} event
   * @param {(data: any) => any} fn its return value (or what its promise resolves to) is the ack's data
   */
  onRequest(event, fn) {
    this._requestHandlers.set(event, fn);
  }

  /**
   * Send an event that wants no answer (buffered while not connected).
   * @param {string} event
   * @param {any} [data]
   * @returns {Promise<void>} resolves once the frame is handed to the socket (not once the
   *   server ran it: use `request` for that); rejects with a ProtocolError when it will never
   *   be sent: `buffer_full`, `logged_out`, `expired` (the session ended while it waited), `closed`
   */
  emit(event, data) {
    const handedOver = new Promise((resolve, reject) => {
      this._send({event, data}, {sent: resolve, dropped: reject});
    });
    // Most callers fire and forget: a dropped emit makes no "unhandled rejection" noise, yet a
    // caller that awaits the promise returned (the original one) still sees the rejection.
    handedOver.catch(() => {});
    return handedOver;
  }

  /**
   * Send an event and wait for its ack. Rejects with a ProtocolError: the server's error
   * code, `timeout`, `closed` (the socket closed after it was sent), or as emit does.
   * @param {string} event
   * @param {any} [data]
   * @param {{timeout?: number}} [options] ms to wait for the ack (10000), buffering included
   * @returns {Promise<any>} the ack's data
   */
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
    // An onConnected listener may have closed the client; then _ended already dropped the rest.
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
    // Only the first frame of a socket is the handshake; a later `connected` is a server event.
    if (frame.event === "connected" && this.state !== "connected") {
      const user = frame.data?.user ?? null;
      // After a 4003 the cookie may be another user's: their rooms are not this one's.
      if (this.user && user?.id !== this.user.id) this._rooms.clear();
      this.socketId = frame.data?.socket ?? null;
      this.user = user;
      this.reconnectAttempts = 0;
      this._setState("connected");
      // Listeners first, then the frames that waited: a new socket is in no room, and a
      // listener that re-joins must do so before a queued chat to that room arrives.
      notify(this._notices.connected, "connected", {socket: this.socketId, user: this.user});
      for (const room of this._rooms.keys()) if (!this._rooms.get(room).joining) this._rejoin(room);
      this._flush();
      return;
    }
    if (frame.id !== undefined) {
      this._answer(frame);
      return;
    }
    if (typeof frame.room === "string" && typeof frame.offset === "number" && !this._inOrder(frame)) return;
    notify(this._listeners.get(frame.event), frame.event, frame.data);
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
    this._rooms.clear();
    const error = this._droppedBecauseClosed();
    for (const {dropped} of this._buffer.splice(0)) dropped(error);
    this._setState("closed");
    if (SESSION_ENDED.has(code)) notify(this._notices.sessionEnded, "session-ended", this.lastClose);
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
    notify(this._notices.state, "state", {state, lastClose: this.lastClose});
  }
}

function subscribe(listeners, fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function notify(listeners, name, data) {
  for (const fn of listeners ?? []) {
    try {
      fn(data);
    } catch (error) {
      console.error(`listener of ${name} failed`, error);
    }
  }
}
