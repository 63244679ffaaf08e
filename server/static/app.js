// The demo page: login over HTTP, then a socket that shares the session.
import {Client} from "/static/client.js";

const $ = (id) => document.getElementById(id);
const client = new Client("/ws");
window.demo = client; // for the browser tests and the curious

let shownUser = null; // whose things the page shows now; null on the login form
const presence = new Map(); // room joined -> Map(user id -> {id, name, sockets}): who is there
const presenceAsks = new Map(); // room -> timer of the next look at the whole list
let countVersion = 0; // bumped by every count the page shows, so an older answer cannot overwrite a newer one

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    credentials: "same-origin",
    headers: body ? {"Content-Type": "application/json"} : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const reply = await response.json().catch(() => ({}));
  if (!response.ok) throw Object.assign(new Error(reply.error?.message ?? response.statusText), {status: response.status});
  return reply;
}

function showCount(count) {
  countVersion += 1;
  $("counter").textContent = count;
}

// The counter lives in the session, and a tab hears of changes only while its socket is
// open: ask the server (GET /api/me) on load and after every (re)connect.
async function refreshCount() {
  const asked = countVersion;
  try {
    const me = await api("GET", "/api/me");
    // A `count` event or an incr answer that came meanwhile is at least as new: keep it.
    if (typeof me.count === "number" && countVersion === asked) showCount(me.count);
  } catch {
    // Logged out meanwhile: the socket's close says so. Otherwise the next connect retries.
  }
}

// Everything the page shows about one user, so that none of it outlives their session.
function clearUserViews() {
  for (const id of ["messages", "notifications"]) $(id).replaceChildren();
  for (const id of ["user", "whoami", "room-info", "chat-error", "counter-error", "you-error"]) $(id).textContent = "";
  for (const id of ["chat-text", "notify-text"]) $(id).value = "";
  for (const name of client.rooms) client.leave(name).catch(() => {});
  presence.clear();
  showPresence();
  showCount(0);
}

function showLoggedIn(user) {
  if (shownUser && shownUser.id !== user.id) clearUserViews(); // another user's login replaced ours
  shownUser = user;
  $("user").textContent = user.name;
  $("login-section").hidden = true;
  $("app-section").hidden = false;
}

function showLogin(message) {
  clearUserViews();
  shownUser = null;
  $("app-section").hidden = true;
  $("login-section").hidden = false;
  $("login-error").textContent = message ?? "";
}

function addLine(list, text, className) {
  const item = document.createElement("li");
  item.textContent = text; // user text is only ever text
  if (className) item.className = className;
  $(list).append(item);
  item.scrollIntoView({block: "nearest"});
}

client.onState(({state, lastClose}) => {
  const labels = {idle: "Not connected", connecting: "Connecting…", connected: "Connected",
    reconnecting: "Reconnecting…", closed: "Disconnected"};
  $("status").textContent = labels[state];
  $("status").className = `status ${state}`;
  $("close-info").textContent = lastClose ? `Last close: ${lastClose.code} (${lastClose.meaning})` : "";
});
client.onSessionEnded((close) => showLogin(`You were disconnected: ${close.meaning}. Please log in again.`));
client.onConnected(({user}) => {
  if (!user) return;
  // After a 4003 the cookie may belong to a newer login as someone else: the socket says who.
  showLoggedIn(user);
  refreshCount(); // the client joins its rooms again by itself, and catches up on their events
});
client.onRecovered(({room: name, recovered, missed, error}) => {
  watchPresence(name, !error); // who is there now: the changes while away were not kept
  if (error) $("room-info").textContent = `Could not join ${name} again after reconnecting: ${error.message}`;
  else if (!recovered) addLine("messages", `[${name}] some messages may be missing`);
  else if (missed) addLine("messages", `[${name}] ${missed} message${missed === 1 ? "" : "s"} you missed`);
});
client.on("count", ({count}) => showCount(count));
client.on("presence", showPresenceChange);
client.on("chat", (m) => addLine("messages", `[${m.room}] ${m.from.name}: ${m.text}`));
client.on("notification", (n) => addLine("notifications", `${new Date(n.ts).toLocaleTimeString()} ${n.message}`));

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const {user} = await api("POST", "/api/login", {username: $("username").value, password: $("password").value});
    $("password").value = ""; // the next person at this screen must not log in with it
    showLoggedIn(user);
    showCount(0); // a login starts a new session; `connected` asks for the real count anyway
    client.connect(); // now, not before: the login just set the cookie the socket needs
  } catch (error) {
    $("login-error").textContent = error.status === 401 ? "Wrong user name or password." : `Login failed: ${error.message}`;
  }
});

$("logout").addEventListener("click", async () => {
  $("you-error").textContent = "";
  try {
    await api("POST", "/api/logout");
  } catch (error) {
    $("you-error").textContent = `Could not log out: ${error.message}`;
    return;
  }
  // The server also closes this session's sockets (4001), in every tab; this one need not wait.
  showLogin();
});

$("whoami-button").addEventListener("click", async () => {
  try {
    $("whoami").textContent = JSON.stringify(await client.request("whoami"), null, 2);
  } catch (error) {
    $("whoami").textContent = `Could not ask: ${error.message}`;
  }
});

$("incr-http").addEventListener("click", async () => {
  $("counter-error").textContent = "";
  try {
    showCount((await api("POST", "/api/incr")).count);
  } catch (error) {
    $("counter-error").textContent = `The server refused: ${error.message}`;
  }
});

$("incr-socket").addEventListener("click", async () => {
  $("counter-error").textContent = "";
  try {
    showCount((await client.request("incr")).count);
  } catch (error) {
    $("counter-error").textContent = error.code === "session_read_only"
      ? "The socket cannot save the session with cookie storage: use the HTTP button (or run the server with --redis)."
      : `The socket refused: ${error.message}`;
  }
});

async function room(event) {
  const name = $("room").value;
  try {
    await (event === "join" ? client.join(name) : client.leave(name));
    watchPresence(name, event === "join");
    $("room-info").textContent = event === "join" ? `In ${name}.` : `Left ${name}.`;
  } catch (error) {
    $("room-info").textContent = `Could not ${event} ${name}: ${error.message}`;
  }
}

// Presence: the whole list once joined, then the server's `joined`/`left` changes, each
// also a line in the chat (but the user's own). The changes say who comes and goes, not how many tabs each has
// open: the list is asked for again after each, for the "2 tabs" marks.
function watchPresence(room, joined) {
  if (joined) {
    if (!presence.has(room)) presence.set(room, new Map());
    askPresence(room, 0);
  } else {
    presence.delete(room);
  }
  showPresence();
}

function askPresence(room, delay) {
  if (presenceAsks.has(room)) return; // one look soon is enough for a burst of changes
  presenceAsks.set(room, setTimeout(async () => {
    presenceAsks.delete(room);
    try {
      const {users} = await client.request("presence", {room});
      if (!presence.has(room)) return; // left meanwhile
      presence.set(room, new Map(users.map((user) => [user.id, user])));
      showPresence();
    } catch {
      // Left, disconnected or unavailable: the next join or change asks again.
    }
  }, delay));
}

function showPresenceChange({room, joined, left}) {
  const users = presence.get(room);
  if (!users) return; // a room this page has left
  const others = (user) => user.id !== shownUser?.id; // "you joined" would be noise
  for (const user of joined) {
    if (!users.has(user.id)) users.set(user.id, {...user, sockets: 1});
    if (others(user)) addLine("messages", `[${room}] ${user.name} joined`, "presence-line");
  }
  for (const user of left) {
    users.delete(user.id);
    if (others(user)) addLine("messages", `[${room}] ${user.name} left`, "presence-line");
  }
  showPresence();
  askPresence(room, 300 + Math.random() * 700); // spread: every member of the room asks
}

function showPresence() {
  const rows = [...presence].map(([room, users]) => {
    const row = document.createElement("li");
    row.dataset.room = room;
    const label = document.createElement("span");
    label.className = "room";
    label.textContent = `${room}:`;
    row.append(label);
    for (const user of users.values()) {
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = user.name; // user text is only ever text
      if (user.sockets > 1) {
        const tabs = document.createElement("span");
        tabs.className = "tabs";
        tabs.textContent = `${user.sockets} tabs`;
        who.append(" ", tabs);
      }
      row.append(" ", who);
    }
    return row;
  });
  $("presence").replaceChildren(...rows);
}

$("room-form").addEventListener("submit", (event) => { event.preventDefault(); room("join"); });
$("leave").addEventListener("click", () => room("leave"));

$("chat-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("chat-error").textContent = "";
  try {
    await client.request("chat", {room: $("room").value, text: $("chat-text").value});
    $("chat-text").value = "";
  } catch (error) {
    $("chat-error").textContent = error.code === "forbidden" ? "Join the room first." : `Not sent: ${error.message}`;
  }
});

$("notify-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  await api("POST", "/api/notify", {message: $("notify-text").value}).catch((e) => addLine("notifications", `Not sent: ${e.message}`));
  $("notify-text").value = "";
});

// At load: a session from an earlier visit connects at once; otherwise the login form.
// `count` in /api/me is optional: a server that does not send it leaves the counter at 0.
api("GET", "/api/me").then(
  (me) => {
    showLoggedIn(me.user);
    if (typeof me.count === "number") showCount(me.count);
    client.connect();
  },
  (error) => showLogin(error.status === 401 ? "" : `Could not check your session: ${error.message}`),
);
