// Customer web chat: one conversation, reached by the signed link /c/<token>.
// Messages arrive as a snapshot on every (re)connect, then live; each message
// has an id, so nothing shown is shown twice. Text always goes in with
// textContent: a customer's or agent's "<img onerror=...>" stays text.

const token = decodeURIComponent(location.pathname.split("/")[2] || "");
const $ = (id) => document.getElementById(id);
const shown = new Map(); // message id -> <li>
let ws = null;
let backoff = 1000;
let reconnectTimer = null;
let finished = false; // closed conversation or dead link: stop reconnecting
let maxText = 4096;

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function timeOf(at) {
  const d = new Date(at);
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function messageItem(m) {
  const li = el("li", m.from === "customer" ? "from-customer" : "from-agent");
  li.dataset.id = m.id;
  li.append(el("span", "msg-text", m.text));
  const who = m.from === "customer" ? "You" : (m.agent || "Agent");
  li.append(el("span", "msg-meta", `${who} · ${timeOf(m.at)}`));
  return li;
}

function scrollDown() {
  const ol = $("chat-messages");
  ol.scrollTop = ol.scrollHeight;
}

function addMessage(m) {
  if (!m || typeof m.id !== "string" || shown.has(m.id)) return;
  const li = messageItem(m);
  shown.set(m.id, li);
  $("chat-messages").append(li);
  scrollDown();
}

function replaceAll(messages) {
  shown.clear();
  $("chat-messages").replaceChildren();
  for (const m of messages) addMessage(m);
}

function notice(text) {
  const p = $("chat-notice");
  p.textContent = text;
  p.hidden = !text;
}

function setConn(up) {
  const c = $("chat-conn");
  c.textContent = up ? "online" : "offline";
  c.className = `conn ${up ? "conn-up" : "conn-down"}`;
  c.dataset.state = up ? "up" : "down";
}

function showStatus(conv) {
  if (!conv) return;
  maxText = conv.max_text || maxText;
  $("chat-text").maxLength = maxText;
  const s = $("chat-status");
  s.dataset.state = conv.state;
  if (conv.state === "assigned") {
    s.textContent = `You are chatting with ${conv.agent || "an agent"}`;
  } else if (conv.state === "closed") {
    s.textContent = "This conversation is closed";
    finish("This conversation is closed. Thank you for contacting us.");
  } else {
    const place = conv.position ? ` (you are number ${conv.position} in line)` : "";
    s.textContent = `Waiting for an agent${place}`;
  }
}

function finish(text) {
  finished = true;
  notice(text);
  $("chat-send").disabled = true;
  $("chat-text").disabled = true;
  if (reconnectTimer) clearTimeout(reconnectTimer);
}

function onError(frame) {
  switch (frame.code) {
    case "rate_limited":
      notice(`Too many messages. Please wait ${Math.ceil(frame.retry_after || 1)} s.`);
      break;
    case "too_large":
      notice(`Messages are limited to ${frame.max} characters.`);
      break;
    case "chat_closed":
      finish("This conversation is closed. Thank you for contacting us.");
      break;
    default:
      notice(frame.message || "Something went wrong.");
  }
}

function onFrame(event) {
  let frame;
  try {
    frame = JSON.parse(event.data);
  } catch {
    return;
  }
  if (frame.type === "snapshot") {
    replaceAll(frame.messages || []);
    showStatus(frame.conversation);
  } else if (frame.type === "message") {
    addMessage(frame.message);
  } else if (frame.type === "status") {
    showStatus(frame.conversation);
  } else if (frame.type === "error") {
    onError(frame);
  }
}

async function checkLink() {
  // A WebSocket hides the HTTP status of a refused upgrade: ask over HTTP.
  try {
    const resp = await fetch(`/api/v1/chat/${encodeURIComponent(token)}`, { cache: "no-store" });
    if (resp.status === 403) {
      const body = await resp.json().catch(() => ({}));
      const code = body.error && body.error.code;
      finish(code === "chat_token_expired" ? "This chat link has expired."
        : code === "chat_closed" ? "This conversation is closed. Thank you for contacting us."
          : "This chat link is not valid.");
      return false;
    }
    if (resp.ok) showStatus((await resp.json()).conversation);
  } catch {
    // offline: the reconnect loop goes on
  }
  return true;
}

function scheduleReconnect() {
  if (finished || reconnectTimer) return;
  const delay = Math.min(backoff, 30000) * (0.75 + Math.random() * 0.5);
  backoff = Math.min(backoff * 2, 30000);
  reconnectTimer = setTimeout(async () => {
    reconnectTimer = null;
    if (await checkLink()) connect();
  }, delay);
}

function connect() {
  if (finished) return;
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${proto}//${location.host}/api/v1/chat/${encodeURIComponent(token)}/ws`);
  ws = socket;
  socket.addEventListener("open", () => {
    backoff = 1000;
    setConn(true);
    notice("");
  });
  socket.addEventListener("message", onFrame);
  socket.addEventListener("close", () => {
    if (ws === socket) ws = null;
    setConn(false);
    scheduleReconnect();
  });
}

function send(ev) {
  ev.preventDefault();
  const box = $("chat-text");
  const text = box.value;
  if (!text.trim()) return;
  if (text.length > maxText) {
    notice(`Messages are limited to ${maxText} characters.`);
    return;
  }
  if (!ws || ws.readyState !== WebSocket.OPEN) {
    notice("You are offline; we are reconnecting. Your message is kept.");
    return;
  }
  ws.send(JSON.stringify({ type: "message", text }));
  box.value = "";
  box.focus();
}

$("chat-form").addEventListener("submit", send);
$("chat-text").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) send(ev);
});
// A phone that slept or changed network: retry now rather than at the next backoff step.
function retryNow() {
  if (finished || ws || document.visibilityState !== "visible") return;
  if (reconnectTimer) clearTimeout(reconnectTimer);
  reconnectTimer = null;
  backoff = 1000;
  scheduleReconnect();
}
document.addEventListener("visibilitychange", retryNow);
window.addEventListener("online", retryNow);
setInterval(() => {
  if (!finished && ws && ws.readyState === WebSocket.OPEN) checkLink();
}, 15000);
connect();
