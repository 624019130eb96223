// The live page (/live): sign in, list your items, and watch their events arrive over the
// WebSocket at /api/v1/ws. Plain JavaScript, no build step: copy what you need.
"use strict";

const PROTOCOL = "glasshouse.events.v1";
const FIRST_RETRY_MS = 500;
const MAX_RETRY_MS = 15000;
const LOG_LENGTH = 200;

// Tokens stay in memory: never in a URL (URLs end up in logs and history), nor in storage.
let tokens = null;
let refreshing = null;
let socket = null;
let lastEventId = null; // the last event applied: a reconnect resumes after it
let retryMs = FIRST_RETRY_MS;
let retryTimer = null;
let listLoaded = Promise.resolve();

const byId = (id) => document.getElementById(id);

// Relative to the page, so that it works under a root path too.
function apiUrl(path) {
  return new URL(`api/v1/${path}`, document.baseURI);
}

async function request(path, options = {}, retried = false) {
  const headers = { ...options.headers };
  if (tokens) headers.Authorization = `Bearer ${tokens.access_token}`;
  const response = await fetch(apiUrl(path), { ...options, headers });
  if (response.status === 401 && tokens && !retried && (await refresh())) {
    return request(path, options, true);
  }
  if (!response.ok) {
    const problem = await response.json().catch(() => ({}));
    throw new Error(problem.detail ?? `${response.status} ${response.statusText}`);
  }
  return response.status === 204 ? null : response.json();
}

// Access tokens are short-lived. A refresh token works once, so concurrent callers share one
// refresh: using it twice would end the login session.
function refresh() {
  refreshing ??= fetch(apiUrl("auth/refresh"), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ refresh_token: tokens.refresh_token }),
  })
    .then(async (response) => {
      if (!response.ok) throw new Error(`refresh: ${response.status}`);
      const renewed = await response.json();
      if (!tokens) return false; // signed out meanwhile
      tokens = renewed;
      return true;
    })
    .catch(() => {
      signOut("Your session ended: sign in again.");
      return false;
    })
    .finally(() => {
      refreshing = null;
    });
  return refreshing;
}

function connect() {
  const url = apiUrl("ws");
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  if (lastEventId !== null) url.searchParams.set("last_event_id", lastEventId);
  // The token travels in the Sec-WebSocket-Protocol header, never in the URL.
  const ws = new WebSocket(url, [PROTOCOL, `bearer.${tokens.access_token}`]);
  ws.addEventListener("message", (message) => handle(JSON.parse(message.data)));
  ws.addEventListener("close", (close) => {
    if (ws === socket) closed(close.code);
  });
  socket = ws;
  setStatus("Connecting…");
}

async function closed(code) {
  socket = null;
  if (code === 4401 && !(await refresh())) return; // credentials expired or revoked
  if (code === 4403) return setStatus("This account may not read events.");
  // 1001 server going away, 1006 network lost, 1008 too slow, 1013 or 4429 busy: back off
  // (with jitter, so that clients do not all return at once), then resume after lastEventId.
  const delay = retryMs * (0.5 + Math.random() / 2);
  retryMs = Math.min(retryMs * 2, MAX_RETRY_MS);
  setStatus(`Disconnected (${code}), reconnecting…`);
  retryTimer = setTimeout(connect, delay);
}

// Messages wait for a list being loaded, then apply in order on top of it.
async function handle(message) {
  await listLoaded;
  switch (message.type) {
    case "stream.ready":
      retryMs = FIRST_RETRY_MS;
      setStatus("Live");
      // First connection: the stream is live from here, so the list loaded now misses nothing.
      if (lastEventId === null) reloadItems();
      return;
    case "stream.reset": // too far behind to replay what was missed: reload, go on from here
      lastEventId = message.id;
      reloadItems();
      return logEvent(message.type, "list reloaded");
    case "stream.delayed":
      return logEvent(message.type, "live delivery paused; the events will follow");
    case "item.created":
    case "item.updated":
      showItem(message.item, "prepend");
      break;
    case "item.deleted":
      byId("items").querySelector(`[data-item-id="${message.item_id}"]`)?.remove();
      break;
    default:
      return; // a message type this page does not know
  }
  lastEventId = message.id;
  logEvent(message.type, `item ${message.item_id}`, message.item?.title);
}

function reloadItems() {
  listLoaded = loadItems().catch((error) => setStatus(`Could not load items: ${error.message}`));
}

async function loadItems() {
  const page = await request("items?limit=100"); // the newest first
  byId("items").replaceChildren();
  for (const item of page.items) showItem(item, "append");
}

// textContent, never innerHTML: titles are user input.
function showItem(item, where) {
  const list = byId("items");
  let row = list.querySelector(`[data-item-id="${item.id}"]`);
  if (!row) {
    row = document.createElement("li");
    row.dataset.itemId = item.id;
    list[where](row);
  }
  row.textContent = `#${item.id} ${item.title} (${item.status})`;
}

function logEvent(type, detail, title) {
  const entry = document.createElement("li");
  entry.dataset.type = type;
  const parts = [new Date().toLocaleTimeString(), type, detail, title];
  entry.textContent = parts.filter(Boolean).join(" · ");
  const log = byId("events");
  log.prepend(entry);
  while (log.children.length > LOG_LENGTH) log.lastChild.remove();
}

function setStatus(text) {
  byId("status").textContent = text;
}

function signOut(reason) {
  const ended = tokens;
  tokens = null;
  lastEventId = null;
  retryMs = FIRST_RETRY_MS;
  clearTimeout(retryTimer);
  const ws = socket;
  socket = null;
  ws?.close(1000);
  byId("items").replaceChildren();
  byId("events").replaceChildren();
  byId("signed-in").hidden = true;
  byId("sign-in").hidden = false;
  setStatus(reason);
  return ended;
}

byId("sign-in").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  try {
    // OAuth2's password flow: a form body, the email as the username.
    const credentials = { username: form.get("email"), password: form.get("password") };
    const body = new URLSearchParams(credentials);
    tokens = await request("auth/token", { method: "POST", body });
  } catch (error) {
    return setStatus(`Sign-in failed: ${error.message}`);
  }
  event.target.reset();
  byId("sign-in").hidden = true;
  byId("signed-in").hidden = false;
  connect();
});

byId("sign-out").addEventListener("click", () => {
  const ended = signOut("Signed out");
  // Ends the login session on the server too: its tokens stop working.
  const headers = { Authorization: `Bearer ${ended.access_token}` };
  fetch(apiUrl("auth/logout"), { method: "POST", headers }).catch(() => {});
});

byId("new-item").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const body = JSON.stringify({ title: new FormData(form).get("title") });
  try {
    // Not added to the list here: its item.created event does that.
    const headers = { "Content-Type": "application/json" };
    await request("items", { method: "POST", headers, body });
    form.reset();
  } catch (error) {
    setStatus(`Could not add the item: ${error.message}`);
  }
});
