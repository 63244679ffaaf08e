// The demo page: login over HTTP, then a socket that shares the session.
import {Client} from "/static/client.js";

const $ = (id) => document.getElementById(id);
const client = new Client("/ws");
window.demo = client; // for the browser tests and the curious

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

function showLoggedIn(user) {
  $("user").textContent = user.name;
  $("login-section").hidden = true;
  $("app-section").hidden = false;
}

function showLogin(message) {
  $("app-section").hidden = true;
  $("login-section").hidden = false;
  $("login-error").textContent = message ?? "";
}

function addLine(list, text) {
  const item = document.createElement("li");
  item.textContent = text; // user text is only ever text
  $(list).append(item);
  item.scrollIntoView({block: "nearest"});
}

client.on("state", ({state, lastClose}) => {
  const labels = {idle: "Not connected", connecting: "Connecting…", connected: "Connected",
    reconnecting: "Reconnecting…", closed: "Disconnected"};
  $("status").textContent = labels[state];
  $("status").className = `status ${state}`;
  $("close-info").textContent = lastClose ? `Last close: ${lastClose.code} (${lastClose.meaning})` : "";
});
client.on("session-ended", (close) => showLogin(`You were disconnected: ${close.meaning}. Please log in again.`));
client.on("count", ({count}) => { $("counter").textContent = count; });
client.on("chat", (m) => addLine("messages", `[${m.room}] ${m.from.name}: ${m.text}`));
client.on("notification", (n) => addLine("notifications", `${new Date(n.ts).toLocaleTimeString()} ${n.message}`));

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const {user} = await api("POST", "/api/login", {username: $("username").value, password: $("password").value});
    showLoggedIn(user);
    client.connect(); // now, not before: the login just set the cookie the socket needs
  } catch (error) {
    $("login-error").textContent = error.status === 401 ? "Wrong user name or password." : `Login failed: ${error.message}`;
  }
});

$("logout").addEventListener("click", async () => {
  await api("POST", "/api/logout").catch(() => {});
  // The server closes this session's sockets with 4001; the page shows the login form then.
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
    $("counter").textContent = (await api("POST", "/api/incr")).count;
  } catch (error) {
    $("counter-error").textContent = `The server refused: ${error.message}`;
  }
});

$("incr-socket").addEventListener("click", async () => {
  $("counter-error").textContent = "";
  try {
    $("counter").textContent = (await client.request("incr")).count;
  } catch (error) {
    $("counter-error").textContent = error.code === "session_read_only"
      ? "The socket cannot save the session with cookie storage: use the HTTP button (or run the server with --redis)."
      : `The socket refused: ${error.message}`;
  }
});

async function room(event) {
  const name = $("room").value;
  try {
    const {members} = await client.request(event, {room: name});
    $("room-info").textContent = event === "join" ? `In ${name} with ${members} socket(s).` : `Left ${name}.`;
  } catch (error) {
    $("room-info").textContent = `Could not ${event} ${name}: ${error.message}`;
  }
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
api("GET", "/api/me").then(({user}) => { showLoggedIn(user); client.connect(); }, () => showLogin());
