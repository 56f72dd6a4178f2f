// Reports page. Theory of operation: sign in (bearer token in sessionStorage,
// the same key as the desk, so a supervisor signed in to the desk is signed in
// here), then GET /api/v1/reports/{name} with from/to/tz/group_by and draw the
// totals as tiles, the rows as a table and one chosen column as an SVG bar
// chart built with DOM calls. Every value from the server is set with
// textContent: report rows carry customer-made strings (tags, queue names).
const API = "/api/v1";
const KEY = "cti.token";
const SVG = "http://www.w3.org/2000/svg";
const $ = (sel) => document.querySelector(sel);
let last = null;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function isoDay(d) {
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
}

function query() {
  const p = new URLSearchParams({ from: $("#rp-from").value, to: $("#rp-to").value, tz: $("#rp-tz").value.trim() });
  const group = $("#rp-group").value;
  if (group) p.set("group_by", group);
  return `${API}/reports/${encodeURIComponent($("#rp-report").value)}?${p}`;
}

async function api(url) {
  const resp = await fetch(url, { headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}` } });
  if (resp.status === 401) { showLogin(); throw new Error("Please sign in"); }
  if (!resp.ok) {
    let message = `HTTP ${resp.status}`;
    try { message = (await resp.json()).error.message; } catch { /* not JSON */ }
    throw new Error(message);
  }
  return resp;
}

function renderTable(table, columns, rows) {
  const head = table.tHead; const body = table.tBodies[0];
  head.replaceChildren(); body.replaceChildren();
  const tr = el("tr");
  for (const c of columns) tr.append(el("th", c));
  head.append(tr);
  for (const row of rows) {
    const line = el("tr");
    for (const c of columns) line.append(el("td", row[c] ?? ""));
    body.append(line);
  }
}

function renderTiles(report) {
  const box = $("#rp-tiles"); box.replaceChildren();
  for (const [k, v] of Object.entries(report.totals)) {
    if (k === report.columns[0]) continue;
    const tile = el("div", null, "tile");
    tile.append(el("div", v ?? "—", "v"), el("div", k.replaceAll("_", " "), "k"));
    box.append(tile);
  }
}

function numericColumns(report) {
  return report.columns.slice(1).filter((c) => report.rows.some((r) => typeof r[c] === "number"));
}

function renderChart(report) {
  const metric = $("#rp-metric").value;
  const box = $("#rp-chart"); box.replaceChildren();
  const rows = report.rows.filter((r) => typeof r[metric] === "number");
  if (!rows.length) { box.append(el("p", "Nothing to chart")); return; }
  const key = report.columns[0];
  const w = 900, h = 260, left = 50, bottom = 60, top = 10;
  const max = Math.max(...rows.map((r) => r[metric]), 0) || 1;
  const step = (w - left - 10) / rows.length;
  const chart = svg("svg", { viewBox: `0 0 ${w} ${h}`, role: "img", "aria-label": `${metric} by ${key}` });
  chart.append(svg("line", { x1: left, y1: h - bottom, x2: w - 5, y2: h - bottom, class: "axis" }));
  chart.append(svg("line", { x1: left, y1: top, x2: left, y2: h - bottom, class: "axis" }));
  chart.append(svg("text", { x: 4, y: top + 10 }, String(max)));
  chart.append(svg("text", { x: 4, y: h - bottom }, "0"));
  rows.forEach((r, i) => {
    const bh = ((h - bottom - top) * r[metric]) / max;
    const x = left + i * step + step * 0.1;
    const bar = svg("rect", { x, y: h - bottom - bh, width: Math.max(1, step * 0.8), height: bh, class: "bar" });
    bar.append(svg("title", {}, `${r[key]}: ${r[metric]}`));
    chart.append(bar);
    if (rows.length <= 40) {
      const tx = x + step * 0.4;
      chart.append(svg("text", { x: tx, y: h - bottom + 12, transform: `rotate(40 ${tx} ${h - bottom + 12})` }, String(r[key]).slice(0, 16)));
    }
  });
  box.append(chart);
}

function render(report) {
  last = report;
  renderTiles(report);
  const metric = $("#rp-metric"); const keep = metric.value;
  metric.replaceChildren(...numericColumns(report).map((c) => { const o = el("option", c); o.value = c; return o; }));
  if ([...metric.options].some((o) => o.value === keep)) metric.value = keep;
  renderChart(report);
  renderTable($("#rp-table"), report.columns, report.rows);
  const repeats = report.repeat_contacts;
  $("#rp-repeats").hidden = !repeats;
  if (repeats) {
    const cols = ["conversation_id", "channel", "started_at", "repeat_conversation_id", "repeat_channel", "repeat_started_at", "customer_id"];
    renderTable($("#rp-repeats-table"), cols, repeats);
  }
}

async function show() {
  $("#rp-error").textContent = "";
  try {
    render(await (await api(query())).json());
  } catch (err) {
    $("#rp-error").textContent = err.message;
  }
}

async function downloadCsv() {
  $("#rp-error").textContent = "";
  try {
    const blob = await (await api(query() + "&format=csv")).blob();
    const link = el("a");
    link.href = URL.createObjectURL(blob);
    link.download = `${$("#rp-report").value}-${$("#rp-from").value}.csv`;
    document.body.append(link); link.click(); link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  } catch (err) {
    $("#rp-error").textContent = err.message;
  }
}

function showLogin() { $("#rp-main").hidden = true; $("#rp-login").hidden = false; }
function showMain() { $("#rp-login").hidden = true; $("#rp-main").hidden = false; show(); }

$("#rp-login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const resp = await fetch(API + "/auth/token", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ login: $("#rp-user").value, password: $("#rp-pass").value }),
  });
  if (!resp.ok) { $("#rp-login-error").textContent = "Wrong login or password"; return; }
  sessionStorage.setItem(KEY, (await resp.json()).token);
  showMain();
});
$("#rp-logout").addEventListener("click", () => { sessionStorage.removeItem(KEY); showLogin(); });
$("#rp-form").addEventListener("submit", (ev) => { ev.preventDefault(); show(); });
$("#rp-csv").addEventListener("click", downloadCsv);
$("#rp-metric").addEventListener("change", () => last && renderChart(last));
for (const id of ["#rp-report", "#rp-group"]) $(id).addEventListener("change", show);

const today = new Date();
$("#rp-to").value = isoDay(today);
$("#rp-from").value = isoDay(new Date(today.getTime() - 6 * 86400000));
$("#rp-tz").value = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
if (sessionStorage.getItem(KEY)) showMain(); else showLogin();
