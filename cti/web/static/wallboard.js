// Supervisor wallboard. Theory of operation: sign in (bearer token kept in
// sessionStorage), GET /api/v1/wallboard for a first snapshot, then a
// WebSocket (/api/v1/events, client "wallboard") on which the server pushes a
// full "wallboard" snapshot at most once a second when something changed.
// Snapshots are not replayed by seq: after a reconnect (backoff 0.5 s -> 10 s)
// the page simply fetches a fresh snapshot. All data goes in with textContent.

const API = "/api/v1";
const KEY = "cti.token"; // the desk's key: a wallboard opened from the desk (rel=opener) is signed in
const $ = (sel) => document.querySelector(sel);

let ws = null;
let backoff = 500;
let pingTimer = null;
let reconnectTimer = null;

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function fmtWait(seconds) {
  const s = Math.max(0, Math.floor(Number(seconds) || 0));
  const m = Math.floor(s / 60);
  return `${m}:${String(s % 60).padStart(2, "0")}`;
}

const STATE_LABEL = {
  available: "Available", on_call: "On call", ringing: "Ringing", paused: "Paused",
  wrapup: "Wrap-up", logged_out: "Logged out",
};
const SLA_LABEL = { ok: "OK", amber: "Due soon", red: "Overdue", met: "Met", breached: "Missed" };

function tile(key, label, value, level) {
  const t = el("div", "tile" + (level ? " " + level : ""));
  t.dataset.k = key;
  t.append(el("div", "label", label), el("div", "value", value));
  return t;
}

function showLogin(message) {
  $("#wb-board").hidden = true;
  $("#wb-login").hidden = false;
  $("#wb-error").textContent = message || "";
}

async function api(path) {
  const resp = await fetch(API + path, {
    headers: { Authorization: "Bearer " + (sessionStorage.getItem(KEY) || "") },
  });
  if (resp.status === 401 || resp.status === 403) {
    const body = await resp.json().catch(() => ({}));
    const err = new Error((body.error && body.error.message) || "not allowed");
    err.auth = true;
    throw err;
  }
  if (!resp.ok) throw new Error("HTTP " + resp.status);
  return resp.json();
}

function renderToday(today, openCount) {
  const box = $("#wb-today");
  const tiles = [];
  if (today) {
    const sl = today.service_level;
    const slLevel = sl === null || sl === undefined ? "" : sl >= 80 ? "ok" : sl >= 60 ? "amber" : "red";
    tiles.push(
      tile("calls_handled", "Calls handled", today.calls_handled, "ok"),
      tile("calls_offered", "Calls offered", today.calls_offered),
      tile("calls_abandoned", "Abandoned", today.calls_abandoned,
           today.calls_abandoned > 0 ? "amber" : ""),
      tile("service_level", `Service level ${today.service_level_target} s`,
           sl === null || sl === undefined ? "—" : `${Math.round(sl)}%`, slLevel),
      tile("texts_handled", "Texts handled", today.texts_handled, "ok"),
    );
  }
  tiles.push(tile("open_texts", "Open texts", openCount, openCount > 0 ? "amber" : "ok"));
  box.replaceChildren(...tiles);
}

function renderQueue(q) {
  const sec = el("section", "queue");
  sec.dataset.queue = q.name;
  sec.append(el("h2", null, `${q.name}  ·  ${q.pbx}`));
  const waitLevel = q.waiting === 0 ? "ok" : q.waiting < 3 ? "amber" : "red";
  const longLevel = q.longest_wait < 20 ? "ok" : q.longest_wait < 60 ? "amber" : "red";
  const tiles = el("div", "tiles");
  tiles.append(
    tile("waiting", "Waiting", q.waiting, waitLevel),
    tile("longest_wait", "Longest wait", fmtWait(q.longest_wait), q.waiting ? longLevel : "ok"),
  );
  for (const [state, label] of Object.entries(STATE_LABEL)) {
    tiles.append(tile(state, label, q.agents[state] || 0));
  }
  const ul = el("ul", "members");
  for (const m of q.members) {
    const li = el("li", "member st-" + m.state);
    li.dataset.member = m.interface;
    li.dataset.state = m.state;
    li.append(el("span", "name", m.name), el("span", "reason",
      m.state === "paused" ? (m.reason ? `Paused: ${m.reason}` : "Paused") : STATE_LABEL[m.state]));
    ul.append(li);
  }
  sec.append(tiles, ul);
  return sec;
}

function renderConversations(list) {
  const body = $("#wb-convs tbody");
  const rows = list.map((c) => {
    const tr = el("tr", "sla-row-" + c.sla.state);
    tr.dataset.conversation = c.id;
    const sla = el("td", "sla sla-" + c.sla.state, SLA_LABEL[c.sla.state] || c.sla.state);
    sla.dataset.sla = c.sla.state;
    tr.append(el("td", null, c.id), el("td", null, c.channel), el("td", null, c.customer),
              el("td", null, c.queue || "—"), el("td", null, c.owner || "unassigned"),
              el("td", null, fmtWait(c.waiting)), sla);
    return tr;
  });
  body.replaceChildren(...rows);
  $("#wb-convs-empty").hidden = list.length > 0;
}

function render(snap) {
  renderToday(snap.today, snap.conversations.length);
  $("#wb-queues").replaceChildren(...snap.queues.map(renderQueue));
  renderConversations(snap.conversations);
  $("#wb-clock").textContent = new Date(snap.at).toLocaleTimeString();
}

function setConn(up) {
  const c = $("#wb-conn");
  c.className = "conn " + (up ? "conn-up" : "conn-down");
  c.textContent = up ? "live" : "reconnecting";
}

async function refresh() {
  try {
    render(await api("/wallboard"));
  } catch (err) {
    if (err.auth) {
      sessionStorage.removeItem(KEY);
      stop();
      showLogin(err.message);
    }
  }
}

function stop() {
  clearInterval(pingTimer);
  clearTimeout(reconnectTimer);
  if (ws) { ws.onclose = null; ws.close(); ws = null; }
}

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const sock = new WebSocket(`${proto}//${location.host}${API}/events`);
  ws = sock;
  sock.onopen = () => {
    sock.send(JSON.stringify({ type: "auth", token: sessionStorage.getItem(KEY) || "",
                               client: "wallboard" }));
  };
  sock.onmessage = (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return; }
    if (msg.type === "hello") {
      backoff = 500;
      setConn(true);
      refresh();
    } else if (msg.type === "wallboard") {
      render(msg);
    } else if (msg.type === "error") {
      sessionStorage.removeItem(KEY);
      stop();
      showLogin(msg.error && msg.error.message);
    }
  };
  sock.onclose = () => {
    if (ws !== sock) return;
    setConn(false);
    reconnectTimer = setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 10000);
  };
  clearInterval(pingTimer);
  pingTimer = setInterval(() => { if (sock.readyState === 1) sock.send("ping"); }, 25000);
}

async function start() {
  $("#wb-login").hidden = true;
  $("#wb-board").hidden = false;
  setConn(false);
  await refresh();
  if (sessionStorage.getItem(KEY)) connect();
}

$("#wb-login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("#wb-error").textContent = "";
  const resp = await fetch(API + "/auth/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ login: $("#wb-user").value, password: $("#wb-pass").value }),
  });
  if (!resp.ok) { $("#wb-error").textContent = "Wrong login or password"; return; }
  sessionStorage.setItem(KEY, (await resp.json()).token);
  $("#wb-pass").value = "";
  start();
});

if (sessionStorage.getItem(KEY)) start(); else showLogin("");
