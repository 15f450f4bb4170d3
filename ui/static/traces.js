// meshlens dashboard, traces: search through the collector's Jaeger API, a duration scatter
// plot of the results, and a trace as a waterfall with span details and the critical path.
// Every telemetry value is inserted as text.
"use strict";

const traces = { loaded: false, results: [] };

function cell(tr, text) {
  const td = document.createElement("td");
  td.textContent = text;
  tr.appendChild(td);
  return td;
}

const usText = (us) => fmt.ms(us / 1000);

async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.errors?.[0]?.msg || body.error || `HTTP ${response.status}`);
  return body;
}

async function loadServices() {
  const select = $("ts-service");
  const current = select.value;
  const { data } = await getJSON("/api/services");
  select.replaceChildren(...data.map((s) => new Option(s, s)));
  if (current && data.includes(current)) select.value = current;
  traces.loaded = true;
  await loadOperations();
}

async function loadOperations() {
  const service = $("ts-service").value;
  const select = $("ts-operation");
  select.replaceChildren(new Option("all", ""));
  if (!service) return;
  const { data } = await getJSON(`/api/services/${encodeURIComponent(service)}/operations`);
  for (const op of data) select.appendChild(new Option(op, op));
}

// "k=v k2=v2" as Jaeger's `tags` JSON.
function parseTags(text) {
  const tags = {};
  for (const part of text.trim().split(/\s+/).filter(Boolean)) {
    const at = part.indexOf("=");
    if (at <= 0) throw new Error(`tag "${part}" is not key=value`);
    tags[part.slice(0, at)] = part.slice(at + 1);
  }
  return tags;
}

function summary(trace) {
  const spans = trace.spans;
  const ids = new Set(spans.map((s) => s.spanID));
  const root = spans.find((s) => !s.references?.some((r) => ids.has(r.spanID))) || spans[0];
  const start = Math.min(...spans.map((s) => s.startTime));
  const end = Math.max(...spans.map((s) => s.startTime + s.duration));
  const errors = spans.filter((s) => s.tags?.some((t) => t.key === "error" && t.value === true)).length;
  const service = trace.processes?.[root.processID]?.serviceName ?? "";
  return { id: trace.traceID, root: `${service}: ${root.operationName}`, spans: spans.length, errors, start, duration: end - start };
}

async function search(event) {
  event?.preventDefault();
  const status = $("ts-status");
  try {
    const params = new URLSearchParams({ service: $("ts-service").value, limit: $("ts-limit").value || "20" });
    if ($("ts-lookback").value === "custom") {
      const start = Date.parse($("ts-start").value), end = Date.parse($("ts-end").value);
      if (Number.isNaN(start) || Number.isNaN(end) || end <= start) throw new Error("pick a start before the end");
      params.set("start", String(start * 1000));
      params.set("end", String(end * 1000));
    } else {
      params.set("lookback", $("ts-lookback").value);
    }
    if ($("ts-operation").value) params.set("operation", $("ts-operation").value);
    const tags = parseTags($("ts-tags").value);
    if (Object.keys(tags).length) params.set("tags", JSON.stringify(tags));
    if ($("ts-min").value.trim()) params.set("minDuration", $("ts-min").value.trim());
    if ($("ts-max").value.trim()) params.set("maxDuration", $("ts-max").value.trim());
    status.textContent = "searching…";
    const { data } = await getJSON(`/api/traces?${params}`);
    traces.results = data.map(summary);
    status.textContent = `${traces.results.length} traces`;
    renderResults();
  } catch (err) {
    status.textContent = `search failed: ${err.message}`;
  }
}

function renderResults() {
  const body = $("ts-results").tBodies[0];
  body.replaceChildren();
  for (const t of traces.results) {
    const tr = document.createElement("tr");
    tr.dataset.trace = t.id;
    cell(tr, t.id.slice(0, 16));
    cell(tr, t.root);
    cell(tr, String(t.spans));
    cell(tr, String(t.errors));
    cell(tr, usText(t.duration));
    cell(tr, new Date(t.start / 1000).toLocaleTimeString());
    tr.addEventListener("click", () => openTrace(t.id));
    body.appendChild(tr);
  }
  // Duration over time: one dot per trace, red when a span failed.
  const svg = $("ts-scatter");
  svg.replaceChildren();
  const w = svg.clientWidth || 800, h = 160, pad = 24;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  if (!traces.results.length) return;
  const t0 = Math.min(...traces.results.map((t) => t.start)), t1 = Math.max(...traces.results.map((t) => t.start), t0 + 1);
  const dmax = Math.max(...traces.results.map((t) => t.duration), 1);
  svg.appendChild(el("text", { x: 4, y: 12, class: "axis" }, usText(dmax)));
  // The time axis: when the first and the last trace found started.
  const clock = (us) => new Date(us / 1000).toLocaleTimeString();
  svg.appendChild(el("text", { x: pad, y: h - 6, class: "axis" }, clock(t0)));
  if (t1 > t0 + 1) svg.appendChild(el("text", { x: w - pad, y: h - 6, class: "axis", "text-anchor": "end" }, clock(t1)));
  for (const t of traces.results) {
    const c = el("circle", { cx: pad + ((t.start - t0) / (t1 - t0)) * (w - 2 * pad), cy: h - pad - (t.duration / dmax) * (h - 2 * pad), r: 4 + Math.min(6, Math.log2(t.spans)), class: t.errors ? "error" : "" });
    c.appendChild(el("title", {}, `${t.root} · ${usText(t.duration)}`));
    c.addEventListener("click", () => openTrace(t.id));
    svg.appendChild(c);
  }
}

// Spans on the critical path: from the root, the child that finished last, then before
// its start the one that finished last before that, and so on, recursively.
function criticalPath(spans, children) {
  const onPath = new Set();
  const walk = (span) => {
    onPath.add(span.spanID);
    let until = span.startTime + span.duration;
    const kids = [...(children.get(span.spanID) || [])].sort((a, b) => (b.startTime + b.duration) - (a.startTime + a.duration));
    for (const k of kids) {
      const end = k.startTime + k.duration;
      if (end <= until + 1 && end > span.startTime) {
        walk(k);
        until = k.startTime;
      }
    }
  };
  const ids = new Set(spans.map((s) => s.spanID));
  for (const root of spans.filter((s) => !s.references?.some((r) => ids.has(r.spanID)))) walk(root);
  return onPath;
}

async function openTrace(id) {
  const view = $("trace-view");
  view.hidden = false;
  $("tv-title").textContent = `Trace ${id}`;
  const box = $("tv-waterfall");
  box.replaceChildren(document.createTextNode("loading…"));
  // The span shown below belonged to the trace opened before.
  $("tv-detail").replaceChildren();
  let trace;
  try {
    trace = (await getJSON(`/api/traces/${encodeURIComponent(id)}`)).data[0];
  } catch (err) {
    box.replaceChildren(document.createTextNode(`cannot load the trace: ${err.message}`));
    return;
  }
  history.replaceState(null, "", `#tab=traces&trace=${encodeURIComponent(id)}`);
  const spans = trace.spans;
  const ids = new Set(spans.map((s) => s.spanID));
  const children = new Map();
  for (const s of spans) {
    const parent = s.references?.find((r) => ids.has(r.spanID))?.spanID;
    if (!children.has(parent ?? "")) children.set(parent ?? "", []);
    children.get(parent ?? "").push(s);
  }
  for (const list of children.values()) list.sort((a, b) => a.startTime - b.startTime);
  const critical = criticalPath(spans, children);
  const t0 = Math.min(...spans.map((s) => s.startTime));
  const total = Math.max(...spans.map((s) => s.startTime + s.duration)) - t0 || 1;
  const s0 = summary(trace);
  $("tv-title").textContent = `${s0.root} · ${usText(total)} · ${spans.length} spans · ${s0.errors} errors`;
  box.replaceChildren();
  const rows = [];
  const visit = (span, depth) => {
    rows.push([span, depth]);
    for (const c of children.get(span.spanID) || []) visit(c, depth + 1);
  };
  for (const root of children.get("") || []) visit(root, 0);
  box.appendChild(ruler(total));
  for (const [span, depth] of rows) {
    const service = trace.processes?.[span.processID]?.serviceName ?? "";
    const failed = span.tags?.some((t) => t.key === "error" && t.value === true);
    const row = document.createElement("div");
    row.className = "span-row";
    row.dataset.span = span.spanID;
    const name = document.createElement("div");
    name.className = "name";
    name.style.paddingLeft = `${depth * 12}px`;
    const svc = document.createElement("span");
    svc.className = "service";
    svc.textContent = service;
    name.append(svc, document.createTextNode(span.operationName));
    const note = retryNote(span);
    if (note) {
      const n = document.createElement("span");
      n.className = "retry-note";
      n.textContent = note;
      name.append(n);
    }
    const track = document.createElement("div");
    track.className = "track";
    const bar = document.createElement("div");
    bar.className = `bar${failed ? " error" : ""}${critical.has(span.spanID) ? " critical" : ""}`;
    bar.style.left = `${((span.startTime - t0) / total) * 100}%`;
    bar.style.width = `${Math.max(0.2, (span.duration / total) * 100)}%`;
    bar.title = usText(span.duration);
    // The duration beside its bar: after it, or before it when the bar ends near the right.
    const label = document.createElement("span");
    label.className = "bar-label";
    label.textContent = usText(span.duration);
    const end = (span.startTime - t0 + span.duration) / total;
    if (end < 0.85) label.style.left = `calc(${end * 100}% + 4px)`;
    else label.style.right = `calc(${(1 - (span.startTime - t0) / total) * 100}% + 4px)`;
    track.append(bar, label);
    row.append(name, track);
    row.addEventListener("click", () => spanDetail(trace, span, row));
    box.appendChild(row);
  }
  view.scrollIntoView({ block: "nearest" });
}

// The waterfall's time ruler: ticks at each quarter of the trace, from its start.
function ruler(total) {
  const row = document.createElement("div");
  row.className = "span-row ruler";
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = "Service · operation";
  const track = document.createElement("div");
  track.className = "track";
  for (const q of [0, 0.25, 0.5, 0.75, 1]) {
    const tick = document.createElement("span");
    tick.className = "tick";
    tick.textContent = q === 0 ? "0 ms" : usText(total * q);
    if (q < 1) tick.style.left = `${q * 100}%`;
    else tick.style.right = "0";
    track.appendChild(tick);
  }
  row.append(name, track);
  return row;
}

/** A sidecar's retries, told apart in the waterfall: "attempt 2" on an attempt's span, "2
 *  retries" on the request's span over its attempts. */
function retryNote(span) {
  const tag = (key) => span.tags?.find((t) => t.key === key)?.value;
  const attempt = Number(tag("meshlens.retry.attempt"));
  if (attempt > 0) return `attempt ${attempt}`;
  const retries = Number(tag("meshlens.retry.count"));
  return retries > 0 ? `${retries} ${retries === 1 ? "retry" : "retries"}` : "";
}

function spanDetail(trace, span, rowEl) {
  for (const r of document.querySelectorAll(".span-row.selected")) r.classList.remove("selected");
  rowEl.classList.add("selected");
  const box = $("tv-detail");
  box.replaceChildren();
  const section = (title, pairs) => {
    const h = document.createElement("h3");
    h.textContent = title;
    const table = document.createElement("table");
    for (const [k, v] of pairs) row(table, k, typeof v === "string" ? v : JSON.stringify(v));
    box.append(h, table);
  };
  const process = trace.processes?.[span.processID] || {};
  section(`${span.operationName} (${usText(span.duration)})`, [["span ID", span.spanID], ["start", new Date(span.startTime / 1000).toISOString()], ...(span.warnings || []).map((w) => ["warning", w])]);
  section("Attributes", (span.tags || []).map((t) => [t.key, t.value]));
  for (const log of span.logs || []) {
    section(`Event at +${usText(log.timestamp - span.startTime)}`, log.fields.map((f) => [f.key, f.value]));
  }
  section(`Process: ${process.serviceName ?? ""}`, (process.tags || []).map((t) => [t.key, t.value]));
}

// Opens the trace search for a service (from the topology's detail panel).
async function openTraces(service, tags) {
  showTab("traces");
  if (!traces.loaded) await loadServices().catch(() => {});
  $("ts-service").value = service;
  await loadOperations().catch(() => {});
  $("ts-tags").value = Object.entries(tags || {}).map(([k, v]) => `${k}=${v}`).join(" ");
  await search();
}

// Listening from the start: a link to the tab (#tab=traces) opens it while the page loads.
document.addEventListener("meshlens:tab", (e) => {
  if (e.detail === "traces" && !traces.loaded) loadServices().catch((err) => { $("ts-status").textContent = err.message; });
});

window.addEventListener("DOMContentLoaded", () => {
  $("trace-search").addEventListener("submit", search);
  const local = (ms) => new Date(ms - new Date().getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  $("ts-start").value = local(Date.now() - 60 * 60000);
  $("ts-end").value = local(Date.now() + 60000);
  $("ts-lookback").addEventListener("change", () => { $("ts-range").hidden = $("ts-lookback").value !== "custom"; });
  $("ts-service").addEventListener("change", () => loadOperations().catch(() => {}));
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("trace")) {
    if (fragment.get("tab") !== "traces") showTab("traces");
    openTrace(fragment.get("trace"));
  }
});
