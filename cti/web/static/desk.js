// Agent desk. Every customer-supplied string goes into the page as a text node
// (el() below), never as markup.
import { countSegments } from "/desk/static/sms.js";

const API = "/api/v1";
const KEY_TOKEN = "cti.token";
const KEY_SEQ = "cti.lastSeq";
const KEY_EPOCH = "cti.epoch";
const SLA_TARGET = {
  chat: 60,
  sms: Number(localStorage.getItem("cti.sla.sms")) || 300,
};
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code;
    this.details = body?.error?.details || {};
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY_TOKEN) || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(API + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await resp.json().catch(() => ({}));
  if (resp.status === 401) {
    logout("Your session has ended; sign in again.");
  }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

function notice(text) {
  $("notice").textContent = text;
}

// ---- login ---------------------------------------------------------------

async function login(ev) {
  ev.preventDefault();
  $("login-error").textContent = "";
  try {
    const resp = await fetch(API + "/auth/token", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ login: $("login-user").value, password: $("login-pass").value }),
    });
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new ApiError(resp.status, data);
    sessionStorage.setItem(KEY_TOKEN, data.token);
    sessionStorage.removeItem(KEY_SEQ);
    $("login-pass").value = "";
    startDesk();
  } catch (err) {
    $("login-error").textContent = err.message;
  }
}

function logout(message = "") {
  sessionStorage.removeItem(KEY_TOKEN);
  sessionStorage.removeItem(KEY_SEQ);
  sessionStorage.removeItem(KEY_EPOCH);
  events.stop();
  $("desk-view").hidden = true;
  $("login-view").hidden = false;
  $("login-error").textContent = message;
}

// ---- events socket -----------------------------------------------------------
// Theory of operation: the socket authenticates with its first message and the
// last seq this tab has seen (kept in sessionStorage, so a reload resumes too).
// The server replays what was missed, then live events. On any close the desk
// reconnects with a growing delay; a new server epoch (restart) means the old
// seq numbers mean nothing, so the desk reconnects from 0 and reloads lists.

const events = {
  ws: null,
  retry: 0,
  timer: null,
  stopped: true,

  start() {
    this.stopped = false;
    this.connect();
  },
  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close();
    this.ws = null;
  },
  connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}${API}/events`);
    this.ws = ws;
    ws.addEventListener("open", () => {
      const lastSeq = Number(sessionStorage.getItem(KEY_SEQ) || 0);
      document.body.dataset.resumedFrom = String(lastSeq);
      ws.send(JSON.stringify({
        type: "auth", token: sessionStorage.getItem(KEY_TOKEN) || "", last_seq: lastSeq,
      }));
    });
    ws.addEventListener("message", (ev) => this.onFrame(ws, ev.data));
    ws.addEventListener("close", (ev) => this.onClose(ws, ev.code));
  },
  onClose(ws, code) {
    if (ws !== this.ws) return;
    setConn(false);
    if (this.stopped) return;
    if (code === 4001) {
      logout("Your session has ended; sign in again.");
      return;
    }
    const delay = Math.min(5000, 300 * 2 ** this.retry);
    this.retry = Math.min(this.retry + 1, 5);
    this.timer = setTimeout(() => this.connect(), delay);
  },
  onFrame(ws, text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    if (msg.type === "hello") {
      const known = sessionStorage.getItem(KEY_EPOCH);
      sessionStorage.setItem(KEY_EPOCH, String(msg.epoch));
      this.retry = 0;
      setConn(true);
      if (known !== null && known !== String(msg.epoch)) {
        sessionStorage.setItem(KEY_SEQ, "0");
        ws.close();
        return;
      }
      refreshLists();
      return;
    }
    if (typeof msg.seq === "number") {
      const last = Number(sessionStorage.getItem(KEY_SEQ) || 0);
      if (msg.seq <= last) return;
      sessionStorage.setItem(KEY_SEQ, String(msg.seq));
      document.body.dataset.lastSeq = String(msg.seq);
    }
    handleEvent(msg);
  },
};

function setConn(up) {
  const c = $("conn");
  c.textContent = up ? "online" : "offline";
  c.className = `conn ${up ? "conn-up" : "conn-down"}`;
}

function handleEvent(msg) {
  switch (msg.type) {
    case "screen_pop":
      document.body.dataset.pops = String(Number(document.body.dataset.pops || 0) + 1);
      showPop(msg);
      if (msg.channel !== "voice" && msg.conversation) {
        rememberConv(msg.conversation);
        openTab(msg.conversation.id, false);
        refreshLists();
      }
      break;
    case "message":
      onMessage(msg);
      break;
    case "delivery_status":
      onDelivery(msg);
      break;
    case "call_answered":
      setCallState(msg);
      break;
    case "call_ended":
      setCallState(msg);
      startWrapup(msg);
      break;
    case "agent_status":
      onAgentStatus(msg);
      break;
    case "phone_state":
      onPhoneState(msg);
      break;
    case "phone_link":
      setSoftphones(msg.softphones);
      break;
    case "resync":
      refreshLists();
      break;
    default:
      break;
  }
}

// ---- screen-pop ------------------------------------------------------------------

const pop = { customerId: null, cursor: null, done: false, loading: false, callId: null,
              seenIds: new Set(), storedKeys: new Set(), pendingKeys: new Set() };

function dl(pairs) {
  const list = el("dl");
  for (const [k, v] of pairs) {
    if (v === null || v === undefined || v === "") continue;
    list.append(el("dt", {}, k), el("dd", {}, v));
  }
  return list;
}

function fmtWait(seconds) {
  const s = Math.max(0, Math.round(Number(seconds) || 0));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function identityText(c) {
  return (c.identities || []).map((i) => `${i.kind}: ${i.value}`).join(", ");
}

function showPop(msg) {
  $("pop-empty").hidden = true;
  $("pop").hidden = false;
  const inter = msg.interaction || {};
  pop.callId = inter.call_id || null;
  pop.lastMerge = null;
  pop.voiceConvId = msg.channel === "voice" && msg.conversation ? msg.conversation.id : pop.voiceConvId;
  $("call-bar").hidden = msg.channel !== "voice" || !pop.callId;
  const voiceState = inter.answered ? "answered" : "ringing";
  const state = el("span", { id: "call-state", class: "muted" }, msg.channel === "voice" ? voiceState : "");
  const voiceTitle = inter.transferred ? "Transferred call" : "Incoming call";
  $("interaction").replaceChildren(
    el("strong", {}, `${msg.channel === "voice" ? voiceTitle : msg.opened
      ? `Conversation #${msg.conversation.id}` : `New ${msg.channel}`} `), state,
    dl([
      ["Channel", msg.channel],
      ["Queue", inter.queue],
      ["Wait", inter.wait !== undefined ? fmtWait(inter.wait) : null],
      ["Dialled", inter.dialled],
      ["Caller", inter.caller],
      ["Contact", inter.caller ? null : inter.contact],
      ["Caller name", inter.caller_name],
    ]),
  );
  renderCard(msg.customer || {}, inter.caller || inter.contact || "", msg.channel);
  startTimeline(msg.customer?.id ?? null, msg.history || []);
}

async function showConversationCustomer(conv) {
  try {
    const customer = await api("GET", `/customers/${conv.customer_id}`);
    if (conv.id !== activeId) return;
    showPop({ channel: conv.channel, customer, history: [], conversation: conv,
              interaction: { queue: conv.queue, contact: conv.contact }, opened: true });
  } catch (err) {
    notice(err.message);
  }
}

function setCallState(msg) {
  const state = $("call-state");
  if (state && (!msg.call_id || !pop.callId || msg.call_id === pop.callId)) {
    state.textContent = msg.type === "call_answered" ? "answered" : "ended";
  }
}

function renderCard(customer, contact, channel = "voice") {
  const card = $("card");
  pop.customer = customer.id ? customer : null;
  $("note-form").hidden = !customer.id;
  $("merge-bar").hidden = !customer.id || !isSupervisor() || customer.provisional;
  if (!$("merge-bar").hidden && !pop.lastMerge) renderMergeBar();
  if (customer.provisional) {
    const name = el("input", { id: "quick-name", placeholder: "new customer name", maxlength: "200" });
    const phone = el("input", { id: "quick-phone", placeholder: "existing customer's phone", maxlength: "64" });
    card.replaceChildren(
      el("div", { class: "card-name unknown" }, channel === "voice" ? "Unknown caller" : "Unknown contact"),
      dl([["Contact", contact || identityText(customer)]]),
      el("form", { class: "quick", onsubmit: (e) => quickCreate(e, name.value, contact) },
        name, el("button", { type: "submit" }, "Create")),
      el("form", { class: "quick", onsubmit: (e) => quickLink(e, phone.value, contact) },
        phone, el("button", { type: "submit" }, "Link")),
    );
    return;
  }
  const phones = (customer.identities || []).filter((i) => i.kind === "phone");
  card.replaceChildren(
    el("div", { class: "card-name", id: "card-name" }, customer.name || "(no name)"),
    phones.length ? el("div", { class: "bar dial-bar" }, ...phones.map((i) =>
      el("button", { type: "button", class: "dial", "data-number": i.value,
                     onclick: () => clickToDial(i.value) }, `Call ${i.value}`))) : null,
    dl([
      ["Contacts", identityText(customer)],
      ["Segment", customer.segment],
      ["Tags", (customer.tags || []).join(", ")],
      ["CRM id", customer.external_id],
      ["Notes", customer.notes],
    ]),
  );
}

function contactKind(contact) {
  return /^\+?[0-9 ()-]{3,}$/.test(contact) ? "phone" : "webchat";
}

async function quickCreate(ev, name, contact) {
  ev.preventDefault();
  if (!name.trim()) return;
  try {
    const created = await api("POST", "/customers", { name: name.trim() });
    const card = await api("POST", `/customers/${created.id}/identities`,
      { kind: contactKind(contact), value: contact });
    renderCard(card, contact);
    startTimeline(card.id, []);
    notice(`Customer ${card.name} created`);
  } catch (err) {
    notice(err.message);
  }
}

async function quickLink(ev, phone, contact) {
  ev.preventDefault();
  try {
    const found = await api("GET", `/customers?phone=${encodeURIComponent(phone)}`);
    if (!found.customers.length) {
      notice(`No customer has ${phone}`);
      return;
    }
    const card = await api("POST", `/customers/${found.customers[0].id}/identities`,
      { kind: contactKind(contact), value: contact });
    renderCard(card, contact);
    startTimeline(card.id, []);
    notice(`Linked to ${card.name}`);
  } catch (err) {
    notice(err.message);
  }
}

// The pop mixes stored events (with an id) and ones still in the server's
// write batch (id null). A pending event and its stored copy share kind,
// conversation and time: the stored copy replaces it silently.
function baseKey(e) {
  const at = String(e.occurred_at || "").replace(/(Z|[+-]00:00)$/, "");
  return `${e.kind}|${e.conversation_id}|${at}`;
}

function isNewEvent(e) {
  const base = baseKey(e);
  if (e.id === null || e.id === undefined) {
    if (pop.storedKeys.has(base) || pop.pendingKeys.has(base)) return false;
    pop.pendingKeys.add(base);
    return true;
  }
  if (pop.seenIds.has(e.id)) return false;
  pop.seenIds.add(e.id);
  pop.storedKeys.add(base);
  return !pop.pendingKeys.delete(base);
}

function eventSummary(e) {
  const p = e.payload || {};
  if (typeof p.text === "string") return p.text;
  const keys = ["queue", "agent", "wait", "ring", "talk", "hold", "status", "wrap_up_code", "to_agent", "to_queue", "reason", "tags", "kind", "target"];
  const fmt = (k) => (typeof p[k] === "number" && ["wait", "ring", "talk", "hold"].includes(k)
    ? `${p[k].toFixed(1)} s` : Array.isArray(p[k]) ? p[k].join(", ") : p[k]);
  return keys.filter((k) => p[k] !== undefined && p[k] !== null).map((k) => `${k}: ${fmt(k)}`).join(", ");
}

function timelineItem(e) {
  const when = e.occurred_at ? new Date(e.occurred_at).toLocaleString() : "";
  return el("li", { "data-kind": e.kind },
    el("div", { class: "tl-head" },
      el("span", { class: "tl-kind" }, e.kind), el("span", {}, e.channel || ""), el("span", {}, when)),
    el("div", { class: "tl-text" }, eventSummary(e)));
}

function addEvents(list) {
  const ol = $("timeline");
  for (const e of list) {
    if (isNewEvent(e)) ol.append(timelineItem(e));
  }
}

// A live event of the customer on screen goes on top of the timeline.
function prependLive(customerId, kind, channel, conversationId, payload) {
  if (customerId !== pop.customerId) return;
  const e = { id: null, kind, channel, conversation_id: conversationId,
              occurred_at: new Date().toISOString(), payload };
  const ol = $("timeline");
  ol.prepend(timelineItem(e));
}

function startTimeline(customerId, first) {
  pop.customerId = customerId;
  pop.cursor = null;
  pop.done = customerId === null;
  pop.seenIds = new Set();
  pop.storedKeys = new Set();
  pop.pendingKeys = new Set();
  $("timeline").replaceChildren();
  $("timeline").scrollTop = 0;
  addEvents(first);
  pop.firstPage = true;
  loadMore();
}

async function loadMore() {
  if (pop.loading || pop.done || pop.customerId === null) return;
  pop.loading = true;
  const customerId = pop.customerId;
  $("timeline-more").textContent = "loading...";
  try {
    const q = pop.cursor ? `&cursor=${encodeURIComponent(pop.cursor)}` : "";
    const page = await api("GET", `/customers/${customerId}/history?limit=20${q}`);
    if (customerId !== pop.customerId) return;
    addEvents(page.events);
    pop.cursor = page.next_cursor;
    pop.done = !page.next_cursor;
  } catch (err) {
    notice(err.message);
  } finally {
    pop.loading = false;
    $("timeline-more").textContent = pop.done ? "end of history" : "";
  }
  const ol = $("timeline");
  if (!pop.done && ol.scrollHeight <= ol.clientHeight + 4) loadMore();
}

function onTimelineScroll() {
  const ol = $("timeline");
  if (ol.scrollTop + ol.clientHeight >= ol.scrollHeight - 40) loadMore();
}

// ---- conversations ---------------------------------------------------------------

const convs = new Map(); // id -> {conv, unread, messages: [], firstReplyAt}
let activeId = null;

function rememberConv(conv) {
  const old = convs.get(conv.id);
  if (old) old.conv = conv;
  else convs.set(conv.id, { conv, unread: 0, messages: null, replied: false, tab: false });
  return convs.get(conv.id);
}

async function refreshLists() {
  try {
    const [mine, queue] = await Promise.all([
      api("GET", "/conversations?scope=mine"),
      api("GET", "/conversations?scope=queue"),
    ]);
    const mineText = mine.conversations.filter((c) => c.channel !== "voice");
    for (const c of mineText) {
      rememberConv(c);
      if (!convs.get(c.id).tab) openTab(c.id, false);
    }
    $("mine-list").replaceChildren(...mineText.map((c) =>
      el("li", { "data-id": String(c.id) },
        el("span", { class: "who" }, `#${c.id} ${c.channel} ${c.contact || ""}`),
        el("button", { type: "button", onclick: () => openTab(c.id, true) }, "Open"))));
    const queued = queue.conversations.filter((c) => c.channel !== "voice");
    $("queue-list").replaceChildren(...queued.map((c) =>
      el("li", { "data-id": String(c.id) },
        el("span", { class: "who" }, `#${c.id} ${c.channel} ${c.contact || ""} ${c.queue || ""}`),
        el("button", { type: "button", class: "take", onclick: () => take(c.id) }, "Take"))));
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) notice(err.message);
  }
}

async function take(id) {
  try {
    const conv = await api("POST", `/conversations/${id}/take`);
    rememberConv(conv);
    notice(`You took conversation #${id}`);
    openTab(id, true);
  } catch (err) {
    if (err instanceof ApiError && err.code === "already_taken") {
      notice(`Conversation #${id} is already taken by ${err.details.owner ?? "another agent"}`);
    } else {
      notice(err.message);
    }
  }
  refreshLists();
}

function tabLabel(entry) {
  const c = entry.conv;
  const label = el("button", {
    type: "button", class: "tab", role: "tab", "data-id": String(c.id),
    "aria-selected": String(c.id === activeId), onclick: () => openTab(c.id, true),
  }, `#${c.id} ${c.channel} ${c.contact || ""}`);
  if (entry.unread > 0) label.append(el("span", { class: "badge" }, entry.unread));
  return label;
}

function renderTabs() {
  const open = [...convs.values()].filter((e) => e.tab);
  $("tabs").replaceChildren(...open.map(tabLabel));
}

async function openTab(id, activate) {
  const entry = convs.get(id) || rememberConv(await api("GET", `/conversations/${id}`));
  entry.tab = true;
  if (entry.messages === null) {
    entry.messages = [];
    await loadMessages(entry);
  }
  if (activate || activeId === null) {
    activeId = id;
    entry.unread = 0;
    renderActive();
    if (activate) showConversationCustomer(entry.conv);
  }
  renderTabs();
}

async function loadMessages(entry) {
  const page = await api("GET", `/customers/${entry.conv.customer_id}/history?limit=100`);
  const mine = page.events.filter((e) => e.conversation_id === entry.conv.id &&
    (e.kind === "message_in" || e.kind === "message_out"));
  mine.reverse();
  const seen = new Set(entry.messages.map((m) => `${m.dir}|${m.text}|${m.at}`));
  const loaded = mine.map((e) => ({
    dir: e.kind === "message_in" ? "in" : "out", text: e.payload.text, at: e.occurred_at,
    status: e.payload.status || "",
  })).filter((m) => !seen.has(`${m.dir}|${m.text}|${m.at}`));
  entry.messages = [...loaded, ...entry.messages];
  entry.replied = entry.replied || entry.messages.some((m) => m.dir === "out");
}

function messageItem(m) {
  return el("li", { class: m.dir === "in" ? "msg-in" : "msg-out" },
    m.text,
    el("span", { class: "msg-meta" },
      `${m.at ? new Date(m.at).toLocaleTimeString() : ""} ${m.status || ""}`.trim()));
}

function renderActive() {
  const entry = convs.get(activeId);
  $("tab-body").hidden = !entry;
  if (!entry) return;
  const c = entry.conv;
  $("tab-title").textContent = `#${c.id} ${c.channel} ${c.contact || ""} (${c.status})`;
  const ol = $("messages");
  ol.replaceChildren(...entry.messages.map(messageItem));
  ol.scrollTop = ol.scrollHeight;
  $("reply").value = sessionStorage.getItem(`cti.draft.${c.id}`) || "";
  renderTemplates(c.channel);
  renderConvTags(c);
  updateSegments();
  updateSla();
}

function onMessage(msg) {
  let entry = convs.get(msg.conversation_id);
  if (!entry) {
    refreshLists();
    return;
  }
  if (entry.messages === null) entry.messages = [];
  entry.messages.push({ dir: "in", text: msg.text, at: new Date().toISOString(), status: "" });
  prependLive(entry.conv.customer_id, "message_in", msg.channel, entry.conv.id, { text: msg.text });
  if (msg.conversation_id === activeId) {
    $("messages").append(messageItem(entry.messages.at(-1)));
    $("messages").scrollTop = $("messages").scrollHeight;
  } else {
    entry.unread += 1;
  }
  entry.tab = true;
  renderTabs();
}

function onDelivery(msg) {
  const entry = convs.get(msg.conversation_id);
  if (!entry) return;
  if (!entry.messages) entry.messages = [];
  const last = [...entry.messages].reverse().find((m) => m.dir === "out");
  if (last) last.status = msg.status;
  prependLive(entry.conv.customer_id, "delivery_status", entry.conv.channel, entry.conv.id,
    { status: msg.status, message_ref: msg.message_ref });
  if (msg.conversation_id === activeId) renderActive();
}

async function sendReply(ev) {
  ev.preventDefault();
  const entry = convs.get(activeId);
  const text = $("reply").value;
  if (!entry || !text.trim()) return;
  try {
    const result = await api("POST", `/conversations/${entry.conv.id}/messages`, { text });
    entry.messages.push({ dir: "out", text, at: new Date().toISOString(), status: result.status });
    entry.replied = true;
    prependLive(entry.conv.customer_id, "message_out", entry.conv.channel, entry.conv.id,
      { text, status: result.status });
    sessionStorage.removeItem(`cti.draft.${entry.conv.id}`);
    $("reply").value = "";
    renderActive();
  } catch (err) {
    notice(err.message);
  }
}

async function closeConv(ev) {
  ev.preventDefault();
  const entry = convs.get(activeId);
  if (!entry) return;
  const code = $("wrapup").value.trim();
  try {
    await api("POST", `/conversations/${entry.conv.id}/close`, code ? { wrap_up_code: code } : {});
    notice(`Conversation #${entry.conv.id} closed${code ? ` (${code})` : ""}`);
    $("wrapup").value = "";
    dropTab(entry.conv.id);
  } catch (err) {
    notice(err.message);
  }
}

function updateSegments() {
  const text = $("reply").value;
  const entry = convs.get(activeId);
  if (entry) sessionStorage.setItem(`cti.draft.${entry.conv.id}`, text);
  if (!entry || entry.conv.channel !== "sms") {
    $("segments").textContent = `${text.length} characters`;
    return;
  }
  const s = countSegments(text);
  $("segments").textContent =
    `${s.coding === "gsm7" ? "GSM-7" : "UCS-2"}: ${s.parts} SMS, ${s.remainingInPart} left in this part`;
  $("segments").dataset.parts = String(s.parts);
}

// SLA: time from queue entry to the first agent reply. Green below two thirds
// of the target, amber up to the target, red beyond; grey once answered.
function updateSla() {
  const entry = convs.get(activeId);
  const sla = $("sla");
  if (!entry) return;
  const target = SLA_TARGET[entry.conv.channel];
  if (!target) {
    sla.hidden = true;
    return;
  }
  sla.hidden = false;
  if (entry.replied) {
    sla.textContent = "replied";
    sla.className = "sla sla-done";
    sla.dataset.state = "done";
    return;
  }
  const elapsed = (Date.now() - Date.parse(entry.conv.queued_at)) / 1000;
  const state = elapsed >= target ? "red" : elapsed >= (target * 2) / 3 ? "amber" : "green";
  sla.textContent = `first reply ${fmtWait(elapsed)} / ${fmtWait(target)}`;
  sla.className = `sla sla-${state}`;
  sla.dataset.state = state;
}

// ---- status ---------------------------------------------------------------------
// Asterisk's queue membership is the truth: the page shows what the server
// reports (GET /agents/me/status, then agent_status frames when a pause is
// made anywhere, the phone included). Choosing a status sends QueuePause
// through the server; on failure the page goes back to the last known state.
// Wrap-up is the time between the end of a call and its wrap-up code.

const status = { paused: false, reason: "", wrapup: null, known: false, unavailable: [] };

function reasonLabel(reason) {
  const opt = [...$("pause-reason").options].find((o) => o.value === reason);
  return opt ? opt.textContent : reason;
}

function renderStatus() {
  const value = status.wrapup ? "wrapup" : status.paused ? "paused" : "available";
  $("status-select").value = value;
  $("pause-reason").hidden = value !== "paused";
  const reasons = $("pause-reason");
  for (const o of [...reasons.options]) if (o.dataset.extra) o.remove();
  if (status.paused && status.reason) {
    if (![...reasons.options].some((o) => o.value === status.reason)) {
      // A reason given elsewhere (phone, CLI, another tool): shown as it is.
      reasons.append(el("option", { value: status.reason, "data-extra": "1" }, status.reason));
    }
    reasons.value = status.reason;
  }
  const note = value === "paused"
    ? `paused${status.reason ? `: ${reasonLabel(status.reason)}` : ""}`
    : value === "wrapup" ? "choose a wrap-up code" : "";
  // A PBX whose node did not answer: the status shown leaves its queues out.
  const partial = status.unavailable.length
    ? `status without ${status.unavailable.join(", ")} (not answering)` : "";
  $("status-note").textContent = [note, partial].filter(Boolean).join("; ");
  $("status-note").dataset.partial = partial ? "1" : "";
  document.body.dataset.status = value === "paused" ? `paused:${status.reason}` : value;
}

function applyStatus(s) {
  status.paused = Boolean(s.paused);
  status.reason = s.reason || "";
  status.unavailable = Array.isArray(s.unavailable) ? s.unavailable.map(String) : [];
  status.known = true;
  renderStatus();
}

async function loadStatus() {
  try {
    applyStatus(await api("GET", "/agents/me/status"));
  } catch (err) {
    $("status-note").textContent = err.code === "conflict" ? "no phone endpoint" : err.message;
    $("status-select").disabled = err.code === "conflict";
  }
}

function onAgentStatus(msg) {
  applyStatus(msg);
  const c = msg.changed;
  if (c && c.paused) notice(`Paused in ${c.queue}${c.reason ? ` (${reasonLabel(c.reason)})` : ""}`);
}

async function onStatus() {
  const value = $("status-select").value;
  if (value === "wrapup") return;
  const paused = value === "paused";
  $("pause-reason").hidden = !paused;
  const reason = paused ? $("pause-reason").value : "";
  try {
    const result = await api("POST", "/agents/me/pause", { paused, reason });
    applyStatus(result);
    notice(paused ? `You are paused (${reasonLabel(reason)})` : "You are available");
  } catch (err) {
    notice(`Status not changed: ${err.message}`);
    renderStatus();
  }
}

function startWrapup(msg) {
  if (!msg.conversation_id) return;
  status.wrapup = msg.conversation_id;
  $("call-bar").hidden = true;
  $("call-wrapup").hidden = false;
  $("call-wrapup").dataset.conversation = String(msg.conversation_id);
  renderStatus();
}

async function finishWrapup(ev) {
  ev.preventDefault();
  const id = status.wrapup;
  if (!id) return;
  const code = $("call-wrapup-code").value;
  try {
    await api("POST", `/conversations/${id}/close`, code ? { wrap_up_code: code } : {});
    notice(`Call wrapped up${code ? ` (${code})` : ""}`);
  } catch (err) {
    if (err.code !== "conflict") {
      notice(err.message);
      return;
    }
  }
  status.wrapup = null;
  $("call-wrapup").hidden = true;
  renderStatus();
  if (pop.customerId !== null) startTimeline(pop.customerId, []);  // the call, with durations
}

// ---- call control ---------------------------------------------------------------
// Hang up, transfer and click-to-dial go through the server's AMI link; answer,
// hold, resume and DTMF go to the agent's own softphone (cti phone) through
// the server, which answers 409 no_softphone when none is linked.

async function phoneCommand(action, digits) {
  try {
    const body = digits ? { action, digits } : { action };
    const result = await api("POST", "/agents/me/phone", body);
    notice(`Phone: ${action} sent to ${result.delivered} softphone(s)`);
  } catch (err) {
    if (err.code === "no_softphone") {
      notice(`No softphone linked: start "cti phone" on this PC, or ${action} on your desk phone`);
    } else {
      notice(`Phone ${action} failed: ${err.message}`);
    }
  }
}

function setSoftphones(n) {
  $("softphone").textContent = n > 0 ? "softphone linked" : "no softphone";
  document.body.dataset.softphones = String(n);
}

function onPhoneState(msg) {
  if (msg.error) {
    notice(`Phone: ${msg.error}`);
    return;
  }
  if (!msg.state) return;
  $("call-bar").dataset.phone = msg.state;
  $("softphone").textContent = `softphone: ${msg.state}`;
}

async function loadSoftphones() {
  try {
    setSoftphones((await api("GET", "/agents/me/phone")).softphones);
  } catch {
    $("softphone").textContent = "";
  }
}

async function hangupCall() {
  if (!pop.callId) return;
  try {
    await api("POST", `/calls/${encodeURIComponent(pop.callId)}/hangup`);
    notice("Call hung up");
  } catch (err) {
    notice(`Hang up failed: ${err.message}`);
  }
}

async function transferCall(ev) {
  ev.preventDefault();
  const target = $("xfer-target").value.trim();
  if (!pop.callId || !target) return;
  const attended = ev.submitter && ev.submitter.value === "attended";
  try {
    await api("POST", `/calls/${encodeURIComponent(pop.callId)}/${attended ? "atxfer" : "transfer"}`,
      { target });
    notice(attended ? `Consulting ${target}: hang up to complete the transfer`
      : `Call transferred to ${target}`);
    if (!attended) {
      $("call-bar").hidden = true;
      const state = $("call-state");
      if (state) state.textContent = `transferred to ${target}`;
    }
    $("xfer-target").value = "";
  } catch (err) {
    notice(`Transfer failed: ${err.message}`);
  }
}

async function clickToDial(number) {
  notice(`Calling ${number}: answer your phone first`);
  try {
    const placed = await api("POST", "/calls", { number });
    pop.callId = placed.call_id;
    $("call-bar").hidden = false;
    const state = $("call-state");
    if (state) state.textContent = `dialling ${number}`;
    notice(`Dialling ${number}`);
  } catch (err) {
    notice(`Call to ${number} failed: ${err.message}`);
  }
}

function sendDtmf(ev) {
  ev.preventDefault();
  const digits = $("dtmf").value.trim();
  if (!digits) return;
  $("dtmf").value = "";
  phoneCommand("dtmf", digits);
}

// ---- templates, tags, notes, transfer ---------------------------------------------

const ref = { templates: [], tags: [], codes: [] };

async function loadReferenceData() {
  try {
    const [t, g, c] = await Promise.all([
      api("GET", "/templates"), api("GET", "/tags"), api("GET", "/wrap-up-codes"),
    ]);
    ref.templates = t.templates;
    ref.tags = g.tags;
    ref.codes = c.codes;
  } catch (err) {
    notice(err.message);
    return;
  }
  $("tag-select").replaceChildren(el("option", { value: "" }, "Tag..."),
    ...ref.tags.map((t) => el("option", { value: t.name }, t.name)));
  $("wrapup-codes").replaceChildren(...ref.codes.map((c) => el("option", { value: c.code }, c.label)));
  $("call-wrapup-code").replaceChildren(el("option", { value: "" }, "(no code)"),
    ...ref.codes.map((c) => el("option", { value: c.code }, c.label || c.code)));
  const entry = convs.get(activeId);
  if (entry) renderTemplates(entry.conv.channel);
}

function renderTemplates(channel) {
  const usable = ref.templates.filter((t) => !t.channel || t.channel === channel);
  $("template-select").replaceChildren(el("option", { value: "" }, "Template..."),
    ...usable.map((t) => el("option", { value: String(t.id) }, t.name)));
}

// {name}, {order}, {agent}: from the customer card and the signed-in agent.
// A variable with no value stays as written so the agent sees what is missing.
function fillTemplate(body, vars) {
  return body.replace(/\{(name|order|agent)\}/g, (m, k) =>
    (vars[k] === undefined || vars[k] === null || vars[k] === "" ? m : String(vars[k])));
}

const customerCache = new Map();

async function customerOf(conv) {
  if (!customerCache.has(conv.customer_id)) {
    customerCache.set(conv.customer_id, await api("GET", `/customers/${conv.customer_id}`));
  }
  return customerCache.get(conv.customer_id);
}

async function insertTemplate() {
  const entry = convs.get(activeId);
  const t = ref.templates.find((x) => String(x.id) === $("template-select").value);
  if (!entry || !t) return;
  try {
    const customer = await customerOf(entry.conv);
    const custom = customer.custom || {};
    const text = fillTemplate(t.body, {
      name: customer.provisional ? "" : customer.name,
      order: custom.order ?? customer.external_id ?? "",
      agent: me.name || me.login,
    });
    const box = $("reply");
    box.value = box.value ? `${box.value} ${text}` : text;
    updateSegments();
    box.focus();
  } catch (err) {
    notice(err.message);
  }
}

function renderConvTags(conv) {
  $("conv-tags").replaceChildren(...(conv.tags || []).map((t) =>
    el("span", { class: "chip", "data-tag": t }, t,
      el("button", { type: "button", class: "chip-x", "aria-label": `remove ${t}`,
                     onclick: () => setTags(conv.id, (conv.tags || []).filter((x) => x !== t)) },
        "×"))));
}

async function setTags(id, tags) {
  try {
    const conv = await api("POST", `/conversations/${id}/tags`, { tags });
    const entry = rememberConv(conv);
    if (id === activeId) renderConvTags(entry.conv);
  } catch (err) {
    notice(err.message);
  }
}

function addTag() {
  const entry = convs.get(activeId);
  const tag = $("tag-select").value;
  if (!entry || !tag) return;
  const tags = new Set(entry.conv.tags || []);
  tags.add(tag);
  setTags(entry.conv.id, [...tags]);
}

function dropTab(id) {
  convs.delete(id);
  activeId = [...convs.values()].find((e) => e.tab)?.conv.id ?? null;
  renderTabs();
  renderActive();
  refreshLists();
}

async function transferConv(ev) {
  ev.preventDefault();
  const entry = convs.get(activeId);
  const target = $("conv-xfer-target").value.trim();
  if (!entry || !target) return;
  const kind = $("conv-xfer-kind").value;
  try {
    await api("POST", `/conversations/${entry.conv.id}/transfer`, { [kind]: target });
    notice(`Conversation #${entry.conv.id} transferred to ${kind} ${target}`);
    $("conv-xfer-target").value = "";
    dropTab(entry.conv.id);
  } catch (err) {
    notice(`Transfer failed: ${err.message}`);
  }
}

async function addNote(ev) {
  ev.preventDefault();
  const text = $("note-text").value;
  const customer = pop.customer;
  if (!customer || !text.trim()) return;
  try {
    const entry = await api("POST", `/customers/${customer.id}/notes`, { text });
    $("note-text").value = "";
    if (customer.id === pop.customerId) {
      $("timeline").prepend(timelineItem(entry));
      isNewEvent(entry);
    }
    notice("Note added");
  } catch (err) {
    notice(err.message);
  }
}

// ---- identify and merge -----------------------------------------------------------

function isSupervisor() {
  return me.role === "supervisor" || me.role === "admin";
}

function renderMergeBar() {
  $("merge-bar").replaceChildren(
    el("button", { type: "button", id: "merge-open", onclick: openMerge }, "Merge a duplicate..."));
}

const merge = { source: null };

function openMerge() {
  if (!pop.customer) return;
  merge.source = null;
  $("merge-target-name").textContent = pop.customer.name || `#${pop.customer.id}`;
  $("merge-source").value = "";
  $("merge-preview").replaceChildren();
  $("merge-error").textContent = "";
  $("merge-confirm").disabled = true;
  $("merge-dialog").showModal();
}

async function findDuplicate() {
  const q = $("merge-source").value.trim();
  $("merge-error").textContent = "";
  merge.source = null;
  $("merge-confirm").disabled = true;
  $("merge-preview").replaceChildren();
  if (!q) return;
  try {
    let found = null;
    if (/^\d{1,12}$/.test(q) && q.length < 7) {
      found = await api("GET", `/customers/${q}`);
    } else {
      const r = await api("GET", `/customers?phone=${encodeURIComponent(q)}`);
      found = r.customers[0] || null;
    }
    if (!found) {
      $("merge-error").textContent = `No customer found for ${q}`;
      return;
    }
    if (found.id === pop.customer.id) {
      $("merge-error").textContent = "That is this customer";
      return;
    }
    merge.source = found;
    $("merge-preview").replaceChildren(
      el("div", { class: "card-name", id: "merge-source-name" }, found.name || "(no name)"),
      dl([["Customer", `#${found.id}`], ["Contacts", identityText(found)]]));
    $("merge-confirm").disabled = false;
  } catch (err) {
    $("merge-error").textContent = err.message;
  }
}

async function confirmMerge() {
  const target = pop.customer;
  if (!merge.source || !target) return;
  try {
    const done = await api("POST", `/customers/${target.id}/merge`, { source_id: merge.source.id });
    $("merge-dialog").close();
    pop.lastMerge = { id: done.merge_id, name: merge.source.name, target: target.id };
    await reloadCard(target.id);
    showUndo();
    notice(`Merged ${merge.source.name} into ${target.name}`);
  } catch (err) {
    $("merge-error").textContent = err.message;
  }
}

function showUndo() {
  const m = pop.lastMerge;
  $("merge-bar").hidden = false;
  $("merge-bar").replaceChildren(
    el("span", { id: "merge-done" }, `Merged ${m.name} into this customer.`),
    el("button", { type: "button", id: "merge-undo", onclick: undoMerge }, "Undo"));
}

async function undoMerge() {
  const m = pop.lastMerge;
  if (!m) return;
  try {
    await api("POST", `/merges/${m.id}/undo`);
    pop.lastMerge = null;
    await reloadCard(m.target);
    notice(`Merge undone: ${m.name} is separate again`);
  } catch (err) {
    notice(`Undo failed: ${err.message}`);
  }
}

async function reloadCard(id) {
  const customer = await api("GET", `/customers/${id}`);
  customerCache.set(id, customer);
  renderCard(customer, "");
  startTimeline(customer.id, []);
}

// ---- start -----------------------------------------------------------------------

const me = {};

async function startDesk() {
  $("login-view").hidden = true;
  $("desk-view").hidden = false;
  try {
    Object.assign(me, await api("GET", "/me"));
    $("me-name").textContent = `${me.name || me.login} (${me.login})`;
    $("sup-links").hidden = !isSupervisor();
    document.body.dataset.role = me.role;
    loadStatus();
    loadReferenceData();
    loadSoftphones();
  } catch (err) {
    if (!sessionStorage.getItem(KEY_TOKEN)) return;
    notice(err.message);
  }
  events.start();
}

function init() {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", () => logout());
  $("timeline").addEventListener("scroll", onTimelineScroll);
  $("reply").addEventListener("input", updateSegments);
  $("reply-form").addEventListener("submit", sendReply);
  $("close-form").addEventListener("submit", closeConv);
  $("status-select").addEventListener("change", onStatus);
  $("pause-reason").addEventListener("change", onStatus);
  $("call-answer").addEventListener("click", () => phoneCommand("answer"));
  $("call-hold").addEventListener("click", () => phoneCommand("hold"));
  $("call-unhold").addEventListener("click", () => phoneCommand("unhold"));
  $("call-hangup").addEventListener("click", hangupCall);
  $("dtmf-form").addEventListener("submit", sendDtmf);
  $("xfer-form").addEventListener("submit", transferCall);
  $("call-wrapup").addEventListener("submit", finishWrapup);
  $("template-insert").addEventListener("click", insertTemplate);
  $("tag-add").addEventListener("click", addTag);
  $("conv-xfer-form").addEventListener("submit", transferConv);
  $("note-form").addEventListener("submit", addNote);
  $("merge-find").addEventListener("click", findDuplicate);
  $("merge-source").addEventListener("keydown", (e) => {
    if (e.key === "Enter") { e.preventDefault(); findDuplicate(); }
  });
  $("merge-confirm").addEventListener("click", confirmMerge);
  $("merge-cancel").addEventListener("click", () => $("merge-dialog").close());
  setInterval(updateSla, 1000);
  const refreshSeconds = Number(localStorage.getItem("cti.refresh.s")) || 5;
  setInterval(() => { if (!events.stopped) refreshLists(); }, refreshSeconds * 1000);
  if (sessionStorage.getItem(KEY_TOKEN)) startDesk();
  else $("login-view").hidden = false;
}

init();
