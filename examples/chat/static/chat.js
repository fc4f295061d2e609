// The PyStrands chat page: sign-in, one WebSocket to the broker (token in
// the query string), rooms, members, private messages, and reconnecting with
// exponential backoff. Plain DOM and WebSocket APIs; nothing to build.
"use strict";

const SESSION_KEY = "pystrands-chat";   // localStorage: every tab of this browser shares it
const BACKOFF_FIRST_MS = 500;           // first wait after a lost connection
const BACKOFF_MAX_MS = 15000;           // the waits double up to this
const MAX_ENTRIES = 500;                // kept per conversation

const $ = (id) => document.getElementById(id);

const state = {
  session: null,        // {token, name, moderator, ws_url}
  ws: null,             // the current WebSocket, or null
  status: "offline",    // offline | connecting | online | reconnecting | removed
  attempt: 0,           // failed attempts since the last successful open
  opens: 0,             // connections opened since this page loaded
  retryTimer: 0,
  retryAt: 0,
  ticker: 0,
  rooms: [],            // the rooms this user is in, as the backend last said
  members: new Map(),   // room -> [{name, moderator}]
  convs: new Map(),     // "#room" or "@name" -> {entries: [], unread: 0}
  active: "",           // the conversation on screen
  pending: new Map(),   // id of a message of ours -> its entry, until confirmed
  kickTarget: "",
  joining: "",          // a room asked for, shown once the backend confirms it
};

// ------------------------------------------------------------------ session

function loadSession() {
  try {
    const s = JSON.parse(localStorage.getItem(SESSION_KEY) || "null");
    return s && typeof s.token === "string" && typeof s.ws_url === "string" ? s : null;
  } catch (e) {
    return null;
  }
}

function saveSession(session) {
  state.session = session;
  try { localStorage.setItem(SESSION_KEY, JSON.stringify(session)); } catch (e) { /* private mode */ }
}

function forgetSession() {
  state.session = null;
  try { localStorage.removeItem(SESSION_KEY); } catch (e) { /* private mode */ }
}

async function postJSON(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify(body),
  });
  let data = {};
  try { data = await response.json(); } catch (e) { /* not JSON */ }
  return {status: response.status, data};
}

async function signIn(event) {
  event.preventDefault();
  const button = $("signin-submit");
  button.disabled = true;
  $("signin-error").textContent = "";
  try {
    const {status, data} = await postJSON("/login", {
      name: $("signin-name").value.trim(),
      password: $("signin-password").value,
    });
    if (status !== 200) {
      $("signin-error").textContent = data.error || `sign-in failed (HTTP ${status})`;
      return;
    }
    $("signin-password").value = "";
    saveSession(data);
    startChat();
  } catch (e) {
    $("signin-error").textContent = "cannot reach the chat server";
  } finally {
    button.disabled = false;
  }
}

function signOut(reason) {
  forgetSession();
  resetChat(reason);
}

// Back to the sign-in form, without touching the stored session.
function resetChat(reason) {
  const ws = state.ws;
  state.ws = null;
  if (ws) ws.close(1000, "signed out");
  clearTimers();
  state.session = null;
  state.rooms = [];
  state.members.clear();
  state.convs.clear();
  state.pending.clear();
  state.active = "";
  state.joining = "";
  state.kickTarget = "";
  setStatus("offline");
  $("chat").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = reason || "";
  $("signin-name").focus();
}

function startChat() {
  $("signin").hidden = true;
  $("chat").hidden = false;
  $("banner").hidden = true;
  const me = $("me");
  me.textContent = state.session.name;
  me.classList.toggle("mod", !!state.session.moderator);
  me.title = state.session.moderator ? "moderator" : "";
  connect();
}

// ------------------------------------------------------------------ connection

function clearTimers() {
  clearTimeout(state.retryTimer);
  clearInterval(state.ticker);
  state.retryTimer = state.ticker = 0;
}

function connect() {
  clearTimers();
  if (!state.session) return;
  setStatus(state.opens ? "reconnecting" : "connecting", "connecting…");
  const params = new URLSearchParams({token: state.session.token});
  if (state.rooms.length) params.set("rooms", state.rooms.join(","));
  let ws;
  try {
    ws = new WebSocket(`${state.session.ws_url}?${params}`);
  } catch (e) {
    setStatus("offline", `bad WebSocket URL ${state.session.ws_url}`);
    return;
  }
  state.ws = ws;
  let opened = false;
  ws.onopen = () => {
    if (state.ws !== ws) return;
    opened = true;
    state.attempt = 0;
    state.opens += 1;
    setStatus("online");
  };
  ws.onmessage = (event) => {
    if (state.ws !== ws) return;
    let msg;
    try { msg = JSON.parse(event.data); } catch (e) { return; }
    if (msg && typeof msg.type === "string") handle(msg);
  };
  ws.onclose = (event) => {
    if (state.ws !== ws) return;   // replaced, or signed out
    state.ws = null;
    failPending("not delivered: the connection was lost");
    if (event.code >= 4000 && event.code <= 4999) {
      // The backend closed this connection on purpose (a moderator's kick).
      setStatus("removed", event.reason || `closed with code ${event.code}`);
      return;
    }
    if (opened) {
      scheduleRetry();
    } else {
      // A refused upgrade shows in a browser only as a failed connection:
      // ask the page's server whether the token is the reason.
      checkSession().then((problem) => {
        if (!state.session || state.ws) return;
        if (problem) signOut(problem); else scheduleRetry();
      });
    }
  };
}

async function checkSession() {
  try {
    const {status, data} = await postJSON("/session", {token: state.session.token});
    if (status === 401) return data.error || "please sign in again";
  } catch (e) {
    // The page's server is unreachable too: keep trying.
  }
  return "";
}

function scheduleRetry() {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** state.attempt);
  const delay = ceiling * (0.5 + Math.random() / 2);   // jitter: tabs do not retry in step
  state.attempt += 1;
  state.retryAt = Date.now() + delay;
  state.retryTimer = setTimeout(connect, delay);
  const tick = () => {
    const seconds = Math.max(0, Math.ceil((state.retryAt - Date.now()) / 1000));
    setStatus("reconnecting", `reconnecting in ${seconds} s (attempt ${state.attempt})`);
  };
  tick();
  state.ticker = setInterval(tick, 500);
}

function retryNow() {
  if (state.status === "reconnecting" && !state.ws) connect();
}

function send(command) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
  state.ws.send(JSON.stringify(command));
  return true;
}

function setStatus(status, detail) {
  state.status = status;
  const el = $("state");
  el.dataset.state = status;
  el.dataset.opens = String(state.opens);
  $("state-text").textContent = detail || status;
  $("retry").hidden = !(status === "reconnecting" && !state.ws);
  const online = status === "online";
  $("chat").dataset.online = String(online);
  $("composer-input").disabled = !online || !state.active;
  $("composer-send").disabled = !online || !state.active;
  if (status === "removed") {
    $("banner-text").textContent = `You were removed from the chat: ${detail}`;
    $("banner").hidden = false;
  }
}

// ------------------------------------------------------------------ messages from the backend

function handle(msg) {
  const me = state.session.name;
  switch (msg.type) {
    case "welcome":
      state.session.moderator = !!msg.moderator;
      setRooms(msg.rooms);
      break;
    case "rooms":
      setRooms(msg.rooms);
      break;
    case "members": {
      const key = "#" + msg.room;
      state.members.set(msg.room, msg.members || []);
      for (const name of msg.joined || []) {
        addNotice(key, name === me ? `You joined #${msg.room}` : `${name} joined`);
      }
      for (const name of msg.left || []) addNotice(key, `${name} left`);
      if (state.active === key) renderMembers();
      break;
    }
    case "message":
      addEntry("#" + msg.room, {from: msg.from, text: msg.text, ts: msg.ts, id: msg.id});
      break;
    case "sent":
      confirm(msg.id);
      break;
    case "pm": {
      if (msg.from === me && state.pending.has(msg.id)) {
        confirm(msg.id);   // our own private message, back from the backend
      } else {
        const peer = msg.from === me ? msg.to : msg.from;
        addEntry("@" + peer, {from: msg.from, text: msg.text, ts: msg.ts, id: msg.id});
      }
      break;
    }
    case "notice":
      addNotice("#" + msg.room, msg.text);
      break;
    case "error":
      state.joining = "";
      if (msg.id && state.pending.has(msg.id)) {
        fail(msg.id, msg.text);
      } else {
        addNotice(state.active, msg.text, "error");
      }
      break;
  }
}

function setRooms(rooms) {
  state.rooms = Array.isArray(rooms) ? rooms : [];
  for (const room of state.rooms) conv("#" + room);
  for (const room of [...state.members.keys()]) {
    if (!state.rooms.includes(room)) state.members.delete(room);
  }
  if (state.joining && state.rooms.includes(state.joining)) {
    state.active = "#" + state.joining;
    state.joining = "";
  }
  if (!state.active || (state.active.startsWith("#") && !state.rooms.includes(state.active.slice(1)))) {
    state.active = state.rooms.length ? "#" + state.rooms[0] : "";
  }
  render();
}

// ------------------------------------------------------------------ conversations

function conv(key) {
  let c = state.convs.get(key);
  if (!c) {
    c = {entries: [], unread: 0};
    state.convs.set(key, c);
  }
  return c;
}

function push(key, entry) {
  const c = conv(key);
  c.entries.push(entry);
  if (c.entries.length > MAX_ENTRIES) c.entries.shift();
  if (key === state.active) {
    const log = $("log");
    const stick = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    log.appendChild(entryElement(entry));
    while (log.children.length > MAX_ENTRIES) log.firstElementChild.remove();
    if (stick || entry.own) log.scrollTop = log.scrollHeight;
  } else {
    if (entry.kind === "msg") c.unread += 1;
    renderConvLists();
  }
}

function addEntry(key, {from, text, ts, id, pending}) {
  const entry = {kind: "msg", from, text, ts: ts || Date.now(), id, own: from === state.session.name,
                 status: pending ? "pending" : "", error: ""};
  push(key, entry);
  return entry;
}

function addNotice(key, text, tone) {
  if (!key) return;
  push(key, {kind: "notice", text, tone: tone || "", ts: Date.now()});
}

function confirm(id) {
  const entry = state.pending.get(id);
  if (!entry) return;
  state.pending.delete(id);
  entry.status = "";
  updateEntry(entry);
}

function fail(id, why) {
  const entry = state.pending.get(id);
  if (!entry) return;
  state.pending.delete(id);
  entry.status = "failed";
  entry.error = why;
  updateEntry(entry);
}

function failPending(why) {
  for (const id of [...state.pending.keys()]) fail(id, why);
}

function newId() {
  return Date.now().toString(36) + Math.random().toString(36).slice(2, 10);
}

function sendMessage(event) {
  event.preventDefault();
  const input = $("composer-input");
  const text = input.value;
  if (!text.trim() || !state.active) return;
  const id = newId();
  const target = state.active.slice(1);
  const command = state.active.startsWith("#")
    ? {type: "say", room: target, text, id}
    : {type: "pm", to: target, text, id};
  if (!send(command)) return;
  const entry = addEntry(state.active, {from: state.session.name, text, id, pending: true});
  state.pending.set(id, entry);
  input.value = "";
}

// ------------------------------------------------------------------ rendering

function activate(key) {
  state.active = key;
  conv(key).unread = 0;
  state.kickTarget = "";
  render();
  $("composer-input").focus();
}

function render() {
  renderConvLists();
  renderLog();
  renderMembers();
  const key = state.active;
  $("conv-title").textContent = key ? (key.startsWith("#") ? key : `private with ${key.slice(1)}`) : "";
  $("leave").hidden = !key.startsWith("#") || state.rooms.length < 2;
  setStatus(state.status, $("state-text").textContent);
}

function renderConvLists() {
  const rooms = $("rooms");
  rooms.replaceChildren(...state.rooms.map((room) => convItem("#" + room, "room", room)));
  const dms = $("dms");
  const peers = [...state.convs.keys()].filter((k) => k.startsWith("@")).map((k) => k.slice(1)).sort();
  dms.replaceChildren(...peers.map((peer) => convItem("@" + peer, "peer", peer)));
}

function convItem(key, attribute, value) {
  const li = document.createElement("li");
  li.dataset[attribute] = value;
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = key;
  button.addEventListener("click", () => activate(key));
  li.appendChild(button);
  const unread = conv(key).unread;
  if (unread) {
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = String(unread);
    li.appendChild(badge);
  }
  if (key === state.active) li.classList.add("active");
  return li;
}

function renderLog() {
  const log = $("log");
  const entries = state.active ? conv(state.active).entries : [];
  log.replaceChildren(...entries.map(entryElement));
  log.scrollTop = log.scrollHeight;
}

function clock(ts) {
  const d = new Date(ts);
  return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
}

function entryElement(entry) {
  const li = document.createElement("li");
  entry.element = li;
  if (entry.kind === "notice") {
    li.className = "notice" + (entry.tone ? " " + entry.tone : "");
    li.textContent = entry.text;
    return li;
  }
  li.className = "msg";
  li.dataset.from = entry.from;
  if (entry.id) li.dataset.id = entry.id;
  const time = document.createElement("time");
  time.textContent = clock(entry.ts);
  const from = document.createElement("span");
  from.className = "from";
  from.textContent = entry.from;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = entry.text;
  const status = document.createElement("span");
  status.className = "status";
  li.append(time, from, text, status);
  paintEntry(entry);
  return li;
}

function paintEntry(entry) {
  const li = entry.element;
  li.classList.toggle("own", entry.own);
  li.classList.toggle("pending", entry.status === "pending");
  li.classList.toggle("failed", entry.status === "failed");
  li.querySelector(".status").textContent =
    entry.status === "pending" ? "sending…" : entry.status === "failed" ? entry.error : "";
}

function updateEntry(entry) {
  if (entry.element && entry.element.isConnected) paintEntry(entry);
}

function renderMembers() {
  const list = $("members");
  const key = state.active;
  const room = key.startsWith("#") ? key.slice(1) : "";
  const members = room ? state.members.get(room) || [] : [];
  $("members-count").textContent = room ? `(${members.length})` : "";
  const me = state.session ? state.session.name : "";
  list.replaceChildren(...members.map((m) => {
    const li = document.createElement("li");
    li.dataset.member = m.name;
    const name = document.createElement("span");
    name.className = "name" + (m.moderator ? " mod" : "");
    name.textContent = m.name + (m.name === me ? " (you)" : "");
    li.appendChild(name);
    if (m.name !== me) {
      li.appendChild(actionButton("message", "dm", () => activate("@" + m.name)));
      if (state.session.moderator) {
        li.appendChild(actionButton("remove", "kick", () => showKick(m.name)));
      }
    }
    return li;
  }));
  const form = $("kick-form");
  form.hidden = !state.kickTarget;
  $("kick-user").textContent = state.kickTarget;
}

function actionButton(label, action, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "link";
  button.dataset.action = action;
  button.textContent = label;
  button.addEventListener("click", onClick);
  return button;
}

function showKick(name) {
  state.kickTarget = name;
  $("kick-reason").value = "";
  renderMembers();
  $("kick-reason").focus();
}

function submitKick(event) {
  event.preventDefault();
  if (!state.kickTarget) return;
  send({type: "kick", user: state.kickTarget, reason: $("kick-reason").value});
  state.kickTarget = "";
  renderMembers();
}

// ------------------------------------------------------------------ wiring

function joinRoom(event) {
  event.preventDefault();
  const input = $("join-input");
  const room = input.value.trim().toLowerCase().replace(/^#/, "");
  if (!room) return;
  if (state.rooms.includes(room)) {
    activate("#" + room);
  } else if (send({type: "join", room})) {
    state.joining = room;
  }
  input.value = "";
}

function leaveRoom() {
  if (state.active.startsWith("#")) send({type: "leave", room: state.active.slice(1)});
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", signIn);
  $("composer").addEventListener("submit", sendMessage);
  $("join-form").addEventListener("submit", joinRoom);
  $("leave").addEventListener("click", leaveRoom);
  $("kick-form").addEventListener("submit", submitKick);
  $("kick-cancel").addEventListener("click", () => { state.kickTarget = ""; renderMembers(); });
  $("signout").addEventListener("click", () => signOut(""));
  $("banner-signin").addEventListener("click", () => signOut(""));
  $("retry").addEventListener("click", retryNow);
  window.addEventListener("online", retryNow);
  // Another tab signed out (or in as someone else): follow it.
  window.addEventListener("storage", (event) => {
    if (event.key !== SESSION_KEY) return;
    const session = loadSession();
    if (!session) {
      if (state.session) resetChat("");
    } else if (!state.session || session.token !== state.session.token) {
      resetChat("");
      state.session = session;
      startChat();
    }
  });
  const session = loadSession();
  if (session) {
    state.session = session;
    startChat();
  } else {
    resetChat("");
  }
});
