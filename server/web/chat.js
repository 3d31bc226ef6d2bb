// The chat page: one `webserver.v1` WebSocket, several rooms, presence, KV and cluster nodes.
import { el, isHttpUrl, traceLink } from "/static/common.js";

const $ = (id) => document.getElementById(id);
const USER_KEY = "webserver.username";
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10000;
const REQUEST_TIMEOUT_MS = 10000;
// `poll=1` marks the page's own background polling: the trace list leaves those traces out.
const NODES_URL = "/nodes?detail=1&poll=1";
// Offer the other nodes once this many connection attempts in a row have failed
// (the first close, then one failed reconnect: the node is gone, not just a blip).
const FAILOVER_AFTER_ATTEMPTS = 2;

const state = {
  username: "",
  myNode: "",
  ws: null,
  wanted: false,          // the user wants to be connected (reconnect after a drop)
  attempt: 0,
  retryTimer: null,
  nextRef: 1,
  pending: new Map(),     // ref -> {resolve, reject, timer}
  rooms: new Map(),       // room -> {messages: [], ids: Set, members: [{user, node}], unread}
  active: "",
  members: [],            // the cluster's members at the last successful /nodes poll
};

// -- connection status ---------------------------------------------------------

function setStatus(kind, text) {
  const s = $("connection-status");
  s.textContent = text;
  s.className = `status status-${kind}`;
  document.body.dataset.connection = kind;
}

// -- WebSocket -----------------------------------------------------------------

function wsUrl() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${location.host}/ws?username=${encodeURIComponent(state.username)}`;
}

function connect() {
  clearTimeout(state.retryTimer);
  state.retryTimer = null;
  if (!state.wanted) return;
  setStatus(state.attempt ? "reconnecting" : "connecting",
            state.attempt ? `reconnecting… (attempt ${state.attempt + 1})` : "connecting…");
  let ws;
  try {
    ws = new WebSocket(wsUrl(), "webserver.v1");
  } catch (err) {
    scheduleReconnect(String(err));
    return;
  }
  state.ws = ws;
  ws.addEventListener("open", () => onOpen(ws));
  ws.addEventListener("message", (ev) => onFrame(ev.data));
  ws.addEventListener("close", (ev) => onClose(ws, ev));
}

async function onOpen(ws) {
  if (ws !== state.ws) return;
  state.attempt = 0;
  hideFailover();
  setStatus("connected", `connected as ${state.username}`);
  $("connect-button").disabled = true;
  $("disconnect-button").disabled = false;
  // Rejoin every room we were in (after a reconnect the server knows none of them).
  for (const room of state.rooms.keys()) joinRoom(room, { rejoin: true });
}

function onClose(ws, ev) {
  if (ws !== state.ws) return;
  state.ws = null;
  for (const [, p] of state.pending) {
    clearTimeout(p.timer);
    p.reject(new Error("connection closed"));
  }
  state.pending.clear();
  if (!state.wanted) {
    setStatus("idle", "disconnected");
    return;
  }
  scheduleReconnect(ev.code ? `closed ${ev.code}${ev.reason ? ": " + ev.reason : ""}` : "closed");
}

function scheduleReconnect(why) {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.attempt);
  const delay = Math.round(base / 2 + Math.random() * base / 2);
  state.attempt += 1;
  setStatus("reconnecting", `reconnecting… in ${(delay / 1000).toFixed(1)} s (${why})`);
  state.retryTimer = setTimeout(connect, delay);
  if (state.attempt >= FAILOVER_AFTER_ATTEMPTS) showFailover();
}

// -- moving to another node when this one is gone ---------------------------------

/** This page on another node, signed in as the same user with the same rooms. */
function chatUrlOn(httpUrl) {
  const params = new URLSearchParams();
  if (state.username) params.set("username", state.username);
  if (state.rooms.size) params.set("rooms", [...state.rooms.keys()].join(","));
  const query = params.toString();
  return `${httpUrl.replace(/\/+$/, "")}/chat${query ? "?" + query : ""}`;
}

function showFailover() {
  const others = state.members.filter((m) => !m.self && isHttpUrl(m.http_url || ""))
    .sort((a, b) => (a.status === "up" ? 0 : 1) - (b.status === "up" ? 0 : 1) || a.name.localeCompare(b.name));
  const box = $("failover");
  box.replaceChildren(el("strong", {}, "This node is not answering. "),
    others.length ? "Reconnecting here continues in the background, or continue on another node:"
      : "No other node is known to this page; reconnecting continues in the background.",
    others.length ? el("ul", { className: "failover-list" }, ...others.map((m) => el("li", {},
      el("a", { href: chatUrlOn(m.http_url), className: "failover-link", dataset: { node: m.name } },
        `Open the chat on ${m.name}`),
      m.status === "up" ? "" : ` (${m.status} at the last check)`))) : null);
  box.hidden = false;
}

function hideFailover() {
  $("failover").hidden = true;
  $("failover").replaceChildren();
}

function send(frame) {
  const ws = state.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return Promise.reject(new Error("not connected"));
  const ref = state.nextRef++;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      state.pending.delete(ref);
      reject(new Error(`no reply to ${frame.type} within ${REQUEST_TIMEOUT_MS / 1000} s`));
    }, REQUEST_TIMEOUT_MS);
    state.pending.set(ref, { resolve, reject, timer });
    ws.send(JSON.stringify({ ...frame, ref }));
  });
}

function onFrame(data) {
  let frame;
  try {
    frame = JSON.parse(data);
  } catch {
    return;
  }
  handle(frame);
}

function handle(frame) {
  if (!frame || typeof frame !== "object") return;
  if (frame.type === "batch" && Array.isArray(frame.frames)) {
    for (const f of frame.frames) handle(f);
    return;
  }
  const ref = frame.ref;
  if (ref !== undefined && state.pending.has(ref)) {
    const p = state.pending.get(ref);
    state.pending.delete(ref);
    clearTimeout(p.timer);
    if (frame.type === "error") {
      const err = new Error(`${frame.code}: ${frame.message}`);
      err.frame = frame;
      p.reject(err);
    } else {
      p.resolve(frame);
    }
    return;
  }
  if (frame.type === "message") addMessage(frame.room, frame);
  else if (frame.type === "presence") onPresence(frame);
  else if (frame.type === "error") notice(`server error: ${frame.code}: ${frame.message}`);
}

// -- rooms -----------------------------------------------------------------------

function roomState(room) {
  let r = state.rooms.get(room);
  if (!r) {
    r = { messages: [], ids: new Set(), members: [], unread: 0, notices: [] };
    state.rooms.set(room, r);
  }
  return r;
}

async function joinRoom(room, { rejoin = false } = {}) {
  const r = roomState(room);
  if (!rejoin) selectRoom(room);
  renderTabs();
  try {
    const reply = await send({ type: "join", room });
    r.members = Array.isArray(reply.members) ? reply.members : [];
    for (const m of reply.history || []) addMessage(room, m, { render: false });
    if (rejoin) notice(`rejoined ${room}`, room);
  } catch (err) {
    notice(`join ${room} failed: ${err.message}`, room);
  }
  if (state.active === room) renderRoom();
}

async function leaveRoom(room) {
  try {
    if (state.ws) await send({ type: "leave", room });
  } catch (err) {
    notice(`leave ${room}: ${err.message}`);
  }
  state.rooms.delete(room);
  if (state.active === room) state.active = state.rooms.keys().next().value || "";
  renderTabs();
  renderRoom();
}

function onPresence(p) {
  const r = state.rooms.get(p.room);
  if (!r) return;
  if (p.event === "join") {
    if (!r.members.some((m) => m.user === p.user && m.node === p.node)) r.members.push({ user: p.user, node: p.node });
  } else if (p.event === "leave") {
    const i = r.members.findIndex((m) => m.user === p.user && m.node === p.node);
    if (i >= 0) r.members.splice(i, 1);
  }
  r.notices.push({ text: `${p.user} ${p.event === "join" ? "joined" : "left"} (${p.node})` });
  if (state.active === p.room) renderRoom();
}

function addMessage(room, m, { render = true } = {}) {
  const r = state.rooms.get(room);
  if (!r) return;
  if (m.id && r.ids.has(m.id)) return;
  if (m.id) r.ids.add(m.id);
  r.messages.push(m);
  if (r.messages.length > 500) r.messages.splice(0, r.messages.length - 500);
  if (room !== state.active) {
    r.unread += 1;
    renderTabs();
  } else if (render) {
    renderRoom();
  }
}

function notice(text, room) {
  const r = room ? state.rooms.get(room) : state.rooms.get(state.active);
  if (r) {
    r.notices.push({ text });
    if (!room || room === state.active) renderRoom();
  } else {
    $("kv-result").replaceChildren(el("p", { className: "error" }, text));
  }
}

function selectRoom(room) {
  state.active = room;
  const r = state.rooms.get(room);
  if (r) r.unread = 0;
  renderTabs();
  renderRoom();
}

// -- rendering ---------------------------------------------------------------

function renderTabs() {
  const tabs = $("room-tabs");
  tabs.replaceChildren();
  for (const [room, r] of state.rooms) {
    const selected = room === state.active;
    const tab = el("button", {
      type: "button", className: "tab", id: `tab-${room}`,
      textContent: r.unread ? `${room} (${r.unread})` : room,
      attrs: { role: "tab", "aria-selected": String(selected), "aria-controls": "room-view" },
      tabIndex: selected ? 0 : -1,
      dataset: { room },
    });
    tab.addEventListener("click", () => selectRoom(room));
    tab.addEventListener("keydown", onTabKey);
    tabs.append(tab);
  }
  $("no-rooms").hidden = state.rooms.size > 0;
  $("room-view").hidden = state.rooms.size === 0;
}

function onTabKey(ev) {
  const rooms = [...state.rooms.keys()];
  const i = rooms.indexOf(ev.currentTarget.dataset.room);
  let next = -1;
  if (ev.key === "ArrowRight") next = (i + 1) % rooms.length;
  else if (ev.key === "ArrowLeft") next = (i - 1 + rooms.length) % rooms.length;
  else if (ev.key === "Home") next = 0;
  else if (ev.key === "End") next = rooms.length - 1;
  if (next < 0) return;
  ev.preventDefault();
  selectRoom(rooms[next]);
  document.getElementById(`tab-${rooms[next]}`)?.focus();
}

function fmtTime(ts) {
  const d = new Date(ts);
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleTimeString();
}

function renderRoom() {
  const room = state.active;
  const r = state.rooms.get(room);
  $("room-view").setAttribute("aria-label", room ? `Room ${room}` : "Room");
  const list = $("messages");
  const members = $("members");
  if (!r) {
    list.replaceChildren();
    members.replaceChildren();
    return;
  }
  const items = r.messages.map((m) => el("li", {
    className: m.user === state.username ? "message mine" : "message",
    dataset: { id: m.id || "", user: m.user || "" },
  },
  el("span", { className: "meta" },
    el("strong", { className: "user" }, m.user), " ",
    el("time", { dateTime: m.timestamp || "" }, fmtTime(m.timestamp)), " ",
    el("span", { className: "node" }, m.node ? `via ${m.node}` : "")),
  el("span", { className: "text" }, m.text),
  m.trace_id ? traceLink(m.trace_id) : null));
  for (const n of r.notices.slice(-5)) items.push(el("li", { className: "notice" }, n.text));
  list.replaceChildren(...items);
  list.scrollTop = list.scrollHeight;
  const sorted = [...r.members].sort((a, b) => (a.user + a.node).localeCompare(b.user + b.node));
  members.replaceChildren(...sorted.map((m) => el("li", { dataset: { user: m.user, node: m.node } },
    el("span", { className: "user" }, m.user), " ", el("span", { className: "node" }, `on ${m.node}`))));
}

// -- KV -------------------------------------------------------------------------

async function onKv(ev) {
  ev.preventDefault();
  const op = ev.submitter ? ev.submitter.value : "get";
  const key = $("kv-key").value.trim();
  const out = $("kv-result");
  if (!key) return;
  const frame = { type: `kv.${op}`, key };
  if (op === "put") {
    try {
      frame.value = JSON.parse($("kv-value").value);
    } catch (err) {
      out.replaceChildren(el("p", { className: "error" }, `value is not valid JSON: ${err.message}`));
      return;
    }
  }
  out.replaceChildren(el("p", { className: "hint" }, `${op} ${key}…`));
  try {
    const reply = await send(frame);
    let summary;
    if (op === "get") {
      summary = reply.found ? `found (from ${reply.from_node})` : "not found";
      if (reply.found) $("kv-value").value = JSON.stringify(reply.value, null, 2);
    } else if (op === "put") {
      summary = `stored on ${reply.node}`;
    } else {
      summary = reply.deleted ? "deleted" : "nothing to delete";
    }
    out.replaceChildren(...[el("p", { className: "ok", dataset: { op } },
      el("strong", {}, `${op} ${key}: `), summary, " ",
      reply.trace_id ? traceLink(reply.trace_id) : null),
    op === "get" && reply.found ? el("pre", { className: "kv-value" }, JSON.stringify(reply.value, null, 2)) : null]
      .filter(Boolean));
  } catch (err) {
    const f = err.frame;
    out.replaceChildren(el("p", { className: "error" }, `${op} ${key} failed: ${err.message}`,
      f && f.trace_id ? traceLink(f.trace_id) : null));
  }
}

// -- nodes -----------------------------------------------------------------------

async function pollNodes() {
  try {
    const res = await fetch(NODES_URL, { cache: "no-store" });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const body = await res.json();
    const members = Array.isArray(body.members) ? body.members : (body.nodes || []).map((n) => ({ name: n, status: "up" }));
    state.members = members;
    const me = members.find((m) => m.self);
    if (me) {
      state.myNode = me.name;
      $("my-node").textContent = me.name;
    }
    $("nodes-body").replaceChildren(...members.map((m) => el("tr", { dataset: { node: m.name, status: m.status } },
      el("td", {}, m.name, m.self ? " (this node)" : ""),
      el("td", {}, el("span", { className: `badge badge-${m.status === "up" ? "up" : "down"}` }, m.status)),
      el("td", {}, isHttpUrl(m.http_url || "") ? el("a", { href: `${m.http_url}/chat`, textContent: m.http_url }) : "–"))));
    $("nodes-error").hidden = true;
  } catch (err) {
    $("nodes-error").hidden = false;
    $("nodes-error").textContent = `this node does not answer (${err.message}); retrying`;
    for (const row of $("nodes-body").querySelectorAll("tr")) row.classList.add("stale");
  }
}

// -- wiring ----------------------------------------------------------------------

function start(username) {
  state.username = username;
  try { localStorage.setItem(USER_KEY, username); } catch { /* ignore */ }
  $("username").disabled = true;
  state.wanted = true;
  state.attempt = 0;
  connect();
}

function stop() {
  state.wanted = false;
  clearTimeout(state.retryTimer);
  if (state.ws) state.ws.close(1000, "bye");
  hideFailover();
  $("username").disabled = false;
  $("connect-button").disabled = false;
  $("disconnect-button").disabled = true;
  setStatus("idle", "disconnected");
}

function init() {
  const params = new URLSearchParams(location.search);
  let saved = "";
  try { saved = localStorage.getItem(USER_KEY) || ""; } catch { /* ignore */ }
  $("username").value = params.get("username") || saved;
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = $("username").value.trim();
    if (name) start(name);
  });
  $("disconnect-button").addEventListener("click", stop);
  $("join-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const room = $("room-name").value.trim();
    if (!room) return;
    if (!state.ws) {
      notice("connect first");
      return;
    }
    $("room-name").value = "";
    if (state.rooms.has(room)) selectRoom(room);
    else joinRoom(room);
  });
  $("chat-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = $("chat-text");
    const text = input.value;
    const room = state.active;
    if (!text || !room) return;
    try {
      const reply = await send({ type: "chat", room, text });
      input.value = "";
      addMessage(room, { room, user: state.username, text, id: reply.id, timestamp: reply.timestamp,
                         node: state.myNode, trace_id: reply.trace_id });
    } catch (err) {
      notice(`not sent: ${err.message}`, room);
    }
  });
  $("leave-button").addEventListener("click", () => state.active && leaveRoom(state.active));
  $("kv-form").addEventListener("submit", onKv);
  pollNodes();
  setInterval(pollNodes, 2000);
  if (params.get("username")) start(params.get("username"));
  for (const room of (params.get("rooms") || "").split(",").map((s) => s.trim()).filter(Boolean)) {
    roomState(room);
    if (!state.active) state.active = room;
  }
  renderTabs();
  renderRoom();
}

init();
